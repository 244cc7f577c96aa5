"""Grafana dashboards for fieldlab, generated from small Python functions (docs/dashboards.md).

- ``model``: plain builders for the pieces of Grafana's dashboard JSON (panels, InfluxQL targets,
  template variables, a grid layout);
- ``overview``, ``machine``, ``losses``, ``shift``, ``lines``: one function per dashboard;
- ``build``: every dashboard as canonical JSON, written to ``dashboards/json`` (``fieldlab dashboards build``);
- ``push``: upload them to a running Grafana with grafana-client (``fieldlab dashboards push``).

Queries are InfluxQL against the gateway's storage scheme (docs/storage.md). Nothing here imports
the gateway: the dashboards depend on the stored data's names only.
"""
DATASOURCE_UID = "fieldlab-influxdb"
FOLDER_TITLE = "fieldlab"
FOLDER_UID = "fieldlab"
