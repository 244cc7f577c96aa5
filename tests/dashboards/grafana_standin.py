"""A small in-process STAND-IN for the few Grafana HTTP API endpoints that ``fieldlab dashboards push`` uses.

It is not Grafana (there is no Grafana server on this machine: not in Debian 12, PyPI or npm). It
imitates, from Grafana's HTTP API documentation, what push relies on:

- every /api request needs ``Authorization: Bearer <token>``: none or a wrong one -> 401; a
  read-only ("viewer") token may read, and gets 403 on every write;
- GET /api/datasources/uid/<uid> (404 when missing), POST /api/datasources (409 if the uid exists);
- GET /api/folders/<uid> (404), POST /api/folders (409 if the uid exists);
- GET /api/dashboards/uid/<uid> -> {"dashboard": …, "meta": {"folderUid", "version", …}} (404);
- POST /api/dashboards/db: create (id and version 1 assigned) or save; each save increments the
  version; without ``overwrite`` a save whose version differs from the stored one -> 412
  version-mismatch, and a new dashboard (no id) with a uid that exists -> 412; an unknown
  folderUid -> 400.

Every request is recorded (method, path), so tests can assert that a second push saves nothing.
"""
from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class GrafanaStandIn:
    def __init__(self, token: str = "glsa_test", viewer_token: str = "glsa_viewer"):
        self.tokens = {token: "editor", viewer_token: "viewer"}
        self.datasources: dict[str, dict] = {}
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}  # uid -> {"dashboard": …, "folderUid": …}
        self.requests: list[tuple[str, str]] = []
        self._ids = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "GrafanaStandIn":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def saves(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] in ("POST", "PUT", "DELETE")]

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # ------------------------------------------------------------------ API
    def handle(self, method: str, path: str, role: str | None, body) -> tuple[int, dict]:
        if role is None:
            return 401, {"message": "Unauthorized"}
        if method != "GET" and role == "viewer":
            return 403, {"message": "You'll need additional permissions to perform this action."}
        parts = path.strip("/").split("/")
        with self._lock:
            if parts[:3] == ["api", "datasources", "uid"] and method == "GET":
                ds = self.datasources.get(parts[3])
                return (200, ds) if ds else (404, {"message": "Data source not found"})
            if parts == ["api", "datasources"] and method == "POST":
                if body.get("uid") in self.datasources or any(d["name"] == body.get("name")
                                                                for d in self.datasources.values()):
                    return 409, {"message": "data source with the same name already exists"}
                ds = {**{k: v for k, v in body.items() if k != "secureJsonData"}, "id": self._next_id(),
                      "secureJsonFields": {k: True for k in body.get("secureJsonData", {})}}
                self.datasources[body["uid"]] = ds
                return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource added", "name": ds["name"]}
            if parts[:2] == ["api", "folders"] and len(parts) == 3 and method == "GET":
                f = self.folders.get(parts[2])
                return (200, f) if f else (404, {"message": "folder not found"})
            if parts == ["api", "folders"] and method == "POST":
                if body.get("uid") in self.folders:
                    return 409, {"message": "a folder with the same uid already exists"}
                f = {"id": self._next_id(), "uid": body["uid"], "title": body["title"], "version": 1}
                self.folders[f["uid"]] = f
                return 200, f
            if parts[:3] == ["api", "dashboards", "uid"] and method == "GET":
                d = self.dashboards.get(parts[3])
                if not d:
                    return 404, {"message": "Dashboard not found"}
                dash = copy.deepcopy(d["dashboard"])
                return 200, {"dashboard": dash, "meta": {"folderUid": d["folderUid"], "version": dash["version"],
                                                         "slug": dash["title"].lower().replace(" ", "-")}}
            if parts == ["api", "dashboards", "db"] and method == "POST":
                return self._save(body)
        return 404, {"message": "Not found"}

    def _save(self, body) -> tuple[int, dict]:
        dash = copy.deepcopy(body["dashboard"])
        folder, overwrite = body.get("folderUid", ""), bool(body.get("overwrite"))
        if folder and folder not in self.folders:
            return 400, {"message": "folder not found"}
        uid = dash.get("uid")
        stored = self.dashboards.get(uid)
        if stored is None:
            dash["id"], dash["version"] = self._next_id(), 1
        else:
            old = stored["dashboard"]
            if not overwrite:
                if dash.get("id") is None:
                    return 412, {"status": "name-exists", "message": "A dashboard with the same uid already exists"}
                if dash.get("version") != old["version"]:
                    return 412, {"status": "version-mismatch",
                                 "message": "The dashboard has been changed by someone else"}
            dash["id"], dash["version"] = old["id"], old["version"] + 1
        self.dashboards[uid] = {"dashboard": dash, "folderUid": folder}
        return 200, {"id": dash["id"], "uid": uid, "status": "success", "version": dash["version"],
                     "url": f"/d/{uid}/{dash['title'].lower().replace(' ', '-')}"}

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                auth = self.headers.get("Authorization", "")
                role = standin.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None
                path = self.path.split("?")[0]
                standin.requests.append((self.command, path))
                status, answer = standin.handle(self.command, path, role, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler
