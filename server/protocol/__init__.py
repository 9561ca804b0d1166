"""OpenAI protocol models: requests (validated, turned into engine parameters) and responses."""
