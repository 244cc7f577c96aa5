"""Dutch and English (gateway/web/i18n/*.json): both catalogues complete and alike, every text the pages use in
them, and the site's own reason names (site configuration ``reasons:``)."""
import json
import re
from pathlib import Path

import pytest

from contract import PACKML, REASONS, SIMPLE
from contract.sim import FAULT_NAMES
from contract.yamlfile import ConfigError
from gateway.config import parse
from gateway.engine import WINDOW_NAMES
from gateway.http import LANGUAGES
from gateway.oee import CATEGORIES
from gateway.service import LOSSES

WEB = Path(__file__).resolve().parents[2] / "gateway" / "web"
SLOT = re.compile(r"\{(\w+)\}")


def catalogues() -> dict[str, dict[str, str]]:
    return {lang: json.loads((WEB / "i18n" / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGUAGES}


def test_both_catalogues_have_the_same_keys_and_placeholders_and_no_empty_text():
    cats = catalogues()
    assert set(cats) == {"en", "nl"}
    en, nl = cats["en"], cats["nl"]
    assert sorted(set(en) ^ set(nl)) == []
    for key in en:
        assert en[key].strip() and nl[key].strip(), key
        assert set(SLOT.findall(en[key])) == set(SLOT.findall(nl[key])), key
        assert re.fullmatch(r"[a-z0-9_]+(\.[A-Za-z0-9_]+)+", key), f"{key}: flat dotted keys"


def test_a_text_for_every_reason_category_loss_window_and_state():
    en = catalogues()["en"]
    wanted = ([f"reason.{code}" for code in REASONS] + [f"cat.{c}" for c in CATEGORIES]
              + [f"loss.{name}" for name in LOSSES] + [f"window.{w}" for w in WINDOW_NAMES]
              + [f"state.{s}" for s in [*PACKML.values(), *SIMPLE.values(), "offline"]]
              + [f"fault.{f}" for f in FAULT_NAMES])
    assert [k for k in wanted if k not in en] == []
    # the Dutch ones are really Dutch where the words differ (not English copied over)
    nl = catalogues()["nl"]
    assert nl["kpi.availability"] == "Beschikbaarheid" and nl["reason.201"] == "materiaaltekort"
    assert sum(nl[k] != en[k] for k in wanted) > len(wanted) // 2


@pytest.mark.parametrize("page", ["index.html", "login.html", "presenter.html", "operator.html"])
def test_every_key_a_page_uses_is_in_the_catalogues(page):
    html = (WEB / page).read_text(encoding="utf-8") + (WEB / "i18n.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n(?:-label)?="([^"]+)"', html)) | set(re.findall(r'\bt\("([\w.]+)"', html))
    prefixes = {k.split(".")[0] for k in catalogues()["en"]}  # any other "prefix.key" string literal too
    used |= {k for k in re.findall(r'"([a-z_]+\.[\w.]+)"', html) if k.split(".")[0] in prefixes}
    assert len(used) > 5, used
    for lang, cat in catalogues().items():
        assert sorted(used - set(cat)) == [], lang
    # keys built at run time: t(`cat.${...}`), t(`kpi.${k}`), ...: their prefixes exist
    for prefix in set(re.findall(r'\bt\(`([\w.]+)\.\$\{', html)):
        assert any(k.startswith(prefix + ".") for k in catalogues()["en"]), prefix


def test_site_configuration_names_reasons_per_language():
    cfg = parse({"reasons": {101: {"en": "bearing failure", "nl": "lagerschade"}, 777: "operator meeting"}})
    assert cfg.reason_names == {101: {"en": "bearing failure", "nl": "lagerschade"}, 777: {"en": "operator meeting"}}
    assert parse({}).reason_names == {}
    for bad, says in (({"reasons": [1]}, "write code -> text per language"),
                      ({"reasons": {"jam": "x"}}, "'jam' is not a reason code"),
                      ({"reasons": {102: {"english": "jam"}}}, "write a text per language"),
                      ({"reasons": {102: {"nl": ""}}}, "write a text per language")):
        with pytest.raises(ConfigError, match=says):
            parse(bad, "site.yaml")
