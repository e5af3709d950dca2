"""The HTTP face (`flowtrack serve --http HOST:PORT`): Prometheus metrics for
operators and a live campaign page for people, served by Starlette on
uvicorn in the gRPC server's own event loop.

- listener.py: the uvicorn server as a task of the loop, its limits, TLS and drain;
- app.py: the Starlette app (`build_app`), security headers, request caps;
- access.py: who a request is (session cookie, Bearer key, open mode);
- routes_api.py, routes_live.py: the page's data comes from the core's use
  cases (core/), called with the caller's principal; the answers are the
  gRPC API's response messages (wire/) as proto3 JSON;
- problems.py: the one place where failures become responses (RFC 9457
  problem documents under /api, one line of text elsewhere);
- paths.py: routes matched on the raw path, so that a campaign id may hold '/';
- openapi.py: `/openapi.json`, the OpenAPI document of the JSON API;
- routes_*.py: the routes, one module per concern; static/: the page.
"""
