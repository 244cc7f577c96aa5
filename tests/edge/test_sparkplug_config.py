"""publish.format: sparkplug in the edge mapping file: defaults from the machine, mistakes named. Pure Python."""
import pytest

from tests.edge.test_config import MINIMAL, error, load


def test_sparkplug_ids_default_to_the_machines_place(tmp_path):
    cfg = load(MINIMAL + "publish:\n  format: sparkplug\n", tmp_path)
    s = cfg.sparkplug
    assert (s.group, s.node, s.device, s.primary_host) == ("hall-1", "line-1", "press-07", None)
    assert load(MINIMAL, tmp_path).sparkplug is None  # the contract's topics unless asked
    cfg = load(MINIMAL + "publish:\n  format: sparkplug\n  sparkplug: {group: plant, primary_host: scada}\n",
               tmp_path)
    assert (cfg.sparkplug.group, cfg.sparkplug.node, cfg.sparkplug.primary_host) == ("plant", "line-1", "scada")


@pytest.mark.parametrize("publish, says", [
    ("  format: spb\n", "publish.format: 'spb': use fieldlab"),
    ("  sparkplug: {group: g}\n", "publish.sparkplug: only with format: sparkplug"),
    ("  format: sparkplug\n  sparkplug: {edge_node: n}\n", "publish.sparkplug.edge_node: unknown key"),
    ("  format: sparkplug\n  sparkplug: {group: a/b}\n", "publish.sparkplug.group: 'a/b': a Sparkplug id"),
])
def test_mistakes_name_the_key_and_the_fix(tmp_path, publish, says):
    assert says in error(MINIMAL + "publish:\n" + publish, tmp_path)
