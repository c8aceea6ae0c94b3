"""Self-Improving Item Tokenization: the model re-derives every item's identifier."""
