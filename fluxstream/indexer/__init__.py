"""Indexing side of fluxstream: turning document changes into BM25 postings and vectors."""
