"""Load tests of a running retserve: multi-turn chat users (Locust), the memory-per-session probe,
and its report. Talks to retserve over HTTP and to Redis only: nothing here imports retserve."""
