-- The demo source database Debezium captures: one table of articles, a few rows to start with.
CREATE TABLE articles (
    id      integer PRIMARY KEY,
    title   text NOT NULL,
    summary text NOT NULL DEFAULT '',
    body    text NOT NULL DEFAULT '',
    author  text,
    tags    text
);
-- Old row images on update/delete, so deletes carry the key and TOAST columns are complete.
ALTER TABLE articles REPLICA IDENTITY FULL;

INSERT INTO articles (id, title, summary, body, author, tags) VALUES
 (1, 'Streaming indexes', 'Keeping a search index in step with a database.',
  'Change data capture turns every committed row change into an event; an indexer applies them in order.',
  'ada', 'cdc,search'),
 (2, 'Hybrid retrieval', 'Keyword and vector search, fused.',
  'BM25 finds exact terms, embeddings find paraphrases; weighted fusion of normalised scores gets both.',
  'grace', 'search,rag'),
 (3, 'Semantic caches', 'Answer repeated questions without recomputing.',
  'A cache keyed by query embeddings must be invalidated when the documents behind an answer change.',
  'linus', 'cache,rag');
