"""memosys: a memory operating system for LLM applications."""

from memosys.client import Client
from memosys.errors import (
    ConflictError,
    EmbedderMismatchError,
    MemosysError,
    NotFoundError,
    StorageError,
    ValidationError,
)
from memosys.system import MemOS, Message, SearchFilters

__all__ = [
    "Client",
    "ConflictError",
    "EmbedderMismatchError",
    "MemOS",
    "MemosysError",
    "Message",
    "NotFoundError",
    "SearchFilters",
    "StorageError",
    "ValidationError",
]
