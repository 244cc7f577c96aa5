"""The ideal cycle time (and product) of a machine that does not report it: a light barrier and a stack light.

From the mapping file: ``ideal_cycle_s`` (one product), or ``products`` (name -> ideal cycle time in seconds)
with ``product``, the one running at the first start. The agent stamps them on every counts batch; a value the
source reports itself (an OPC UA tag ``ideal_cycle_s``) wins over the fixed one.

The product is switched at run time with a command on the machine's cmd topic (docs/contract.md)::

    {"v": 1, "cmd": "set_product", "args": {"product": "cap"}}

(``fieldlab edge product FILE NAME`` sends it). The switch counts from the moment the agent receives it: counts
after it carry the new product and its ideal cycle time, so performance is Σ(ideal × parts) per product
(docs/oee.md). An unknown product is refused with the list of known ones and changes nothing.

The current product is kept in a small JSON file next to the outbox (``<outbox>.product``), so a restarted agent
continues with it. Editing ``product:`` in the mapping file wins over that file: the file also records which
``product:`` the mapping file named, and a different one now means someone chose again.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from contract import ContractError, decode_command

from .batcher import Batcher

log = logging.getLogger("fieldlab.edge")

COMMAND = "set_product"


class UnknownProduct(ValueError):
    """A product that is not in the mapping file's table."""


class Products:
    """``table``: product -> ideal cycle time (seconds per part); empty with a fixed ``ideal_cycle_s``.
    ``path``: where the current product is kept (None: not kept)."""

    def __init__(self, table: dict[str, float] | None = None, product: str | None = None,
                 ideal_cycle_s: float | None = None, path: str | Path | None = None):
        self.table = dict(table or {})
        if self.table and product not in self.table:
            raise UnknownProduct(self._unknown(product))
        if not self.table and ideal_cycle_s is None:
            raise ValueError("give ideal_cycle_s or a product table")
        self.configured, self.fixed = product, ideal_cycle_s
        self.path = None if path is None else Path(path)
        self.current = self._restore() if self.table else None
        self.refused = 0
        self._batcher: Batcher | None = None

    @classmethod
    def from_config(cls, cfg, buffer: str | Path) -> Products | None:
        """The mapping file's ``ideal_cycle_s`` / ``products`` (edge/config.py), or None when it has neither."""
        if cfg.products:
            return cls(cfg.products, cfg.product, path=f"{buffer}.product")
        if cfg.ideal_cycle_s is not None:
            return cls(ideal_cycle_s=cfg.ideal_cycle_s)
        return None

    @property
    def switchable(self) -> bool:
        return bool(self.table)

    @property
    def ideal_cycle_s(self) -> float:
        return self.table[self.current] if self.table else self.fixed

    def _unknown(self, name) -> str:
        return f"product {name!r} is not in the mapping file's products; use one of {', '.join(self.table)}"

    def start(self, batcher: Batcher) -> None:
        """Stamp the current product on every count from now on (the source's own value wins)."""
        self._batcher = batcher
        if self.current is not None:
            batcher.assume("product", self.current)
        batcher.assume("ideal_cycle_s", self.ideal_cycle_s)

    def switch(self, name, ts: float) -> str:
        """Counts after ``ts`` are of product ``name``. UnknownProduct (nothing changes) if it is not in the table."""
        if not isinstance(name, str) or name not in self.table:
            raise UnknownProduct(self._unknown(name))
        before, self.current = self.current, name
        if self._batcher is not None:
            self._batcher.record("product", ts, name)
            self._batcher.record("ideal_cycle_s", ts, self.table[name])
        self._save()
        return f"product {before} -> {name} (ideal cycle time {self.table[name]:g} s)"

    def command(self, payload: bytes, ts: float) -> str | None:
        """A message on the machine's cmd topic. Returns what changed; None for commands meant for someone else
        (a simulator's fault injection); ValueError (UnknownProduct, ContractError) for a bad set_product."""
        try:
            cmd = decode_command(payload)
        except ContractError:
            if b"set_product" in bytes(payload):
                raise
            return None  # not ours to judge
        if cmd.cmd != COMMAND:
            return None
        if set(cmd.args) != {"product"}:
            raise ValueError(f"set_product: write args {{\"product\": NAME}}, got {json.dumps(cmd.args)[:200]}")
        return self.switch(cmd.args["product"], ts)

    def _restore(self) -> str:
        """The product kept from the last run, unless the mapping file now names another one."""
        if self.path is None or not self.path.exists():
            return self.configured
        try:
            kept = json.loads(self.path.read_text())
            product, configured = kept["product"], kept["configured"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("product file %s not readable (%s): starting with product %s", self.path, e, self.configured)
            return self.configured
        if configured != self.configured:
            log.info("the mapping file now names product %s (was %s): starting with it", self.configured, configured)
            return self.configured
        if product not in self.table:
            log.warning("kept product %r is no longer in the mapping file: starting with %s", product, self.configured)
            return self.configured
        return product

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"product": self.current, "configured": self.configured}))
            os.replace(tmp, self.path)
        except OSError as e:  # the switch holds for this run; only a restart would forget it
            log.warning("could not keep the product in %s (%s): after a restart the agent starts with %s",
                        self.path, e, self.configured)
