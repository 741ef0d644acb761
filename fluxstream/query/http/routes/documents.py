"""``/v1/documents/{doc_id}``: what the serving index holds for one document."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fluxstream.query.http.dependencies import SearchKey, Services
from fluxstream.query.http.errors import error
from fluxstream.schemas.api import ChunkView, DocumentResponse, ErrorResponse
from fluxstream.schemas.events import CollectionName, DocId

router = APIRouter(tags=["documents"])


@router.get("/v1/documents/{doc_id:path}", response_model=DocumentResponse,
            responses={404: {"model": ErrorResponse, "description": "no such document in the collection"}})
async def get_document(doc_id: DocId, principal: SearchKey, services: Services,
                       collection: Annotated[CollectionName, Query()] = "default") -> Any:
    target = await services.target(collection)
    postings = services.searcher.postings
    doc = await postings.get_document(target.index, doc_id)
    if doc.version is None:
        return error(404, "not_found", f"document {doc_id!r} is not in collection {collection!r}")
    records = await postings.fetch_chunks(target.index, [c.chunk_id for c in doc.chunks])
    embedded = await services.searcher.postgres.run(services.vectors.document_hashes(target.index, doc_id))
    chunks = [
        ChunkView(chunk_id=c.chunk_id, chunk_no=c.chunk_no, text=r.text if r else "",
                  content_hash=c.content_hash, has_vector=embedded.get(c.chunk_id) == c.content_hash)
        for c, r in zip(doc.chunks, records, strict=True)
    ]
    return DocumentResponse(doc_id=doc_id, collection=collection, version=doc.version, deleted=doc.deleted,
                            title=doc.title, metadata=doc.metadata, chunks=chunks)
