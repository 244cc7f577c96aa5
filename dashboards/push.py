"""``fieldlab dashboards push``: upload the dashboards (and the data source, if missing) to a running Grafana.

With grafana-client (``pip install 'fieldlab[dashboards]'``). Idempotent: each dashboard is compared
with what Grafana holds and saved only when it differs, so a second push changes nothing. Saves send
the version Grafana holds, so a dashboard someone edited in between is not silently overwritten
(Grafana answers 412).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from contract.errors import ServiceError
from contract.secrets import read_secret

from . import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID
from .build import dashboards

TOKEN_ENV = "FIELDLAB_GRAFANA_TOKEN"
INFLUX_PASSWORD_ENV = "FIELDLAB_INFLUX_PASSWORD"
#: keys Grafana sets itself when it saves a dashboard: not part of the comparison
GRAFANA_OWNED = {"id", "version"}


@dataclass(frozen=True)
class Datasource:
    """The InfluxDB data source to create if Grafana has none with uid fieldlab-influxdb."""

    url: str = "http://localhost:8086"  # as Grafana's server reaches it (not necessarily as this computer does)
    database: str = "fieldlab"
    user: str | None = None
    password: str | None = None

    def model(self) -> dict:
        d = {"name": "fieldlab InfluxDB", "uid": DATASOURCE_UID, "type": "influxdb", "access": "proxy",
             "url": self.url, "jsonData": {"dbName": self.database, "httpMode": "POST", "version": "InfluxQL"}}
        if self.user:
            d["user"] = self.user
        if self.password:
            d["secureJsonData"] = {"password": self.password}
        return d


def token_from(token: str | None, token_file: str | None) -> str:
    if token and token_file:
        raise ServiceError("give either --token or --token-file, not both")
    found = token.strip() if token else read_secret("--token-file", token_file, TOKEN_ENV)
    if not found:
        raise ServiceError(f"no Grafana token: set {TOKEN_ENV} or give --token-file FILE (a service account token; "
                           "role Editor, or Admin so that push can create the data source)")
    return found


def grafana_url(url: str) -> str:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ServiceError(f"--url {url!r}: write Grafana's address like http://localhost:3000")
    if u.username or u.password:
        raise ServiceError("--url: do not put a user or password in the address; use a token "
                           f"(${TOKEN_ENV} or --token-file)")
    path = u.path.rstrip("/")
    return urlunsplit((u.scheme, u.netloc, path + "/" if path else "", "", ""))


class Pusher:
    def __init__(self, url: str, token: str, timeout: float = 10.0, out=print):
        try:
            from grafana_client import GrafanaApi  # an optional extra: imported only when pushing
        except ImportError:
            raise ServiceError("push needs grafana-client: pip install 'fieldlab[dashboards]' "
                               "(in a clone: .venv/bin/pip install -e '.[dashboards]')") from None

        self.url = grafana_url(url)
        self.api = GrafanaApi.from_url(self.url, credential=token, timeout=timeout)
        self.out = out

    def _call(self, action: str, fn, *args, missing_ok: bool = False):
        """Run one API call; translate what can go wrong into one clear line (ServiceError)."""
        from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaTimeoutError

        try:
            return fn(*args)
        except GrafanaTimeoutError as e:
            raise ServiceError(f"Grafana at {self.url} did not answer in time while trying to {action}: {e}") from None
        except GrafanaClientError as e:
            status = e.status_code
            if status == 404 and missing_ok:
                return None
            if status == 401:
                raise ServiceError(f"Grafana at {self.url} refused the token (401 Unauthorized): check "
                                   f"${TOKEN_ENV} or --token-file; a service account token starts with glsa_") from None
            if status == 403:
                raise ServiceError(f"the token may not {action} (403 Forbidden): give its service account the "
                                   "Editor role (Admin to create the data source)") from None
            if status == 412:
                raise ServiceError(f"cannot {action}: it was changed in Grafana meanwhile (412: {_message(e)}); "
                                   "run push again to compare with the new version") from None
            raise ServiceError(f"Grafana at {self.url} refused to {action} ({status}: {_message(e)})") from None
        except GrafanaException as e:  # 5xx, or the transport's own errors
            raise ServiceError(f"Grafana at {self.url} failed to {action}: {e}") from None
        except OSError as e:  # connection refused, name not resolved, TLS (niquests' errors are OSErrors)
            raise ServiceError(f"cannot reach Grafana at {self.url} (to {action}): {_reason(e)}; check --url "
                               "and that Grafana is running") from None

    def ensure_datasource(self, ds: Datasource) -> str:
        if self._call("read the data source", self.api.datasource.get_datasource_by_uid, DATASOURCE_UID,
                      missing_ok=True) is not None:
            return "exists"
        self._call("create the data source", self.api.datasource.create_datasource, ds.model())
        return "created"

    def ensure_folder(self) -> str:
        if self._call("read the folder", self.api.folder.get_folder, FOLDER_UID, missing_ok=True) is not None:
            return "exists"
        self._call("create the folder", self.api.folder.create_folder, FOLDER_TITLE, FOLDER_UID)
        return "created"

    def push_dashboard(self, model: dict) -> str:
        """created, updated or unchanged."""
        uid = model["uid"]
        there = self._call(f"read dashboard {uid}", self.api.dashboard.get_dashboard, uid, missing_ok=True)
        body = {"folderUid": FOLDER_UID, "overwrite": False, "message": "fieldlab dashboards push"}
        if there is None:
            self._call(f"create dashboard {uid}", self.api.dashboard.update_dashboard, {**body, "dashboard": model})
            return "created"
        current = there.get("dashboard", {})
        same = ({k: v for k, v in current.items() if k not in GRAFANA_OWNED}
                == {k: v for k, v in model.items() if k not in GRAFANA_OWNED})
        if same and there.get("meta", {}).get("folderUid") == FOLDER_UID:
            return "unchanged"
        update = {**model, "id": current.get("id"), "version": current.get("version")}
        self._call(f"update dashboard {uid}", self.api.dashboard.update_dashboard, {**body, "dashboard": update})
        return "updated"

    def push(self, ds: Datasource | None) -> dict[str, str]:
        """Data source (unless None), folder, every dashboard; what happened to each, also printed."""
        done = {}
        if ds is not None:
            done[f"datasource {DATASOURCE_UID}"] = self.ensure_datasource(ds)
        done[f"folder {FOLDER_TITLE}"] = self.ensure_folder()
        for model in dashboards().values():
            done[f"dashboard {model['uid']}"] = self.push_dashboard(model)
        for what, result in done.items():
            self.out(f"{what}: {result}")
        return done


def _message(e) -> str:
    r = getattr(e, "response", None)
    if isinstance(r, dict) and r.get("message"):
        return str(r["message"])
    return str(getattr(e, "message", "") or e)


def _reason(e: OSError) -> str:
    """The part of a transport error a person needs ("Connection refused", "Failed to resolve 'host'")."""
    text = str(e)
    for pattern in (r"\[Errno -?\d+\] ([^'\")(]+)", r"(Failed to resolve '[^']+')", r"(certificate verify failed[^'\")]*)",
                    r"(timed out)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip().rstrip(":")
    return text.strip() or type(e).__name__
