"""ticker: a live news-ticker service.

Briefs are published over HTTP into Redis streams and fanned out over WebSocket;
every client resumes from its cursor without loss. ``create_app()`` builds the ASGI app.
"""

from ticker.app import create_app
from ticker.config import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]
__version__ = "0.1.0"
