"""What a server is started with: `Limits` on one request, and the `ServeSettings` its app and routes read."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. `k + offset` bounds the FAISS call; uploads are refused from their size and
    their header's pixel count before any pixel is decoded."""

    max_k: int = 1000
    max_window: int = 10_000  # k + offset
    max_queries: int = 64  # ids, vectors, texts or images in one request
    max_upload_bytes: int = 16 * 2**20  # the whole request body
    max_pixels: int = 40_000_000  # one uploaded image
    max_request_pixels: int = 64_000_000  # all the images of one request (at least max_pixels)
    max_uploads_at_once: int = 2  # image searches decoding at the same time; more get 503 + Retry-After
    max_rows: int = 100_000  # queries × (k + offset): the hits one request makes the server rank
    max_response_bytes: int = 16 * 2**20  # queries × k × (16 B per catalog column + 4 B per vector value)
    thumbnail_sizes: tuple[int, int] = (16, 512)


@dataclass(frozen=True)
class ServeSettings:
    """How one app answers. `hosts`: the host names the Host header may carry, with any port (a tokenless
    loopback server: its loopback names), None for any. `cors`: the one other origin whose pages may call the
    API. `originals`: full images are served, not only thumbnails."""

    token: str | None = None
    cors: str | None = None
    originals: bool = False
    limits: Limits = field(default_factory=Limits)
    hosts: frozenset[str] | None = None
