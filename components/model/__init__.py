"""The generative recommender: a causal LM whose vocabulary holds the identifier tokens."""
