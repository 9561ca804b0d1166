"""Training-side helpers: synthetic chat data and tokenizer training for the shipped model."""
