"""One short real chain run per module fills an InfluxDB database that the dashboards' queries read."""
import asyncio
import uuid

import pytest

from .chain import fill


@pytest.fixture(scope="module")
def filled(mosquitto, influxdb, tmp_path_factory):
    site = f"d{uuid.uuid4().hex[:10]}"
    db = f"dash{uuid.uuid4().hex[:8]}"
    return asyncio.run(fill(mosquitto, influxdb, site, db, tmp_path_factory.mktemp("chain")))
