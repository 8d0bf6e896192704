"""The app fixtures of tests/app (temp data dir, TestClient, live uvicorn), for the security tests."""

from tests.app.conftest import (  # noqa: F401
    app,
    client,
    database_url,
    live_server,
    session_factory,
    settings,
    started_job,
)
