"""The async query service: BM25, vector and hybrid search over the live index."""
