"""GET /v2/models/{name}/card over a real `modelpress serve`: Markdown by default, JSON when asked,
any deployed version's card by number, and 404s that say what is missing."""

from __future__ import annotations

import json
import urllib.request

import pytest

from modelpress.deploy import card
from tests.serving.conftest import deploy_tiny, start_server, stop_server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card-route")
    repo = tmp / "repo"
    for seed in (0, 1, 2):  # versions 1-3; the server loads only the latest (Triton's default policy)
        deploy_tiny(repo, tmp, seed=seed)
    for f in (card.CARD_MD, card.CARD_JSON):  # version 2 as if deployed before model cards
        (repo / "tiny" / "2" / f).unlink()
    server = start_server(repo, tmp, "--poll-seconds", "0")
    yield server
    stop_server(server)


def _get(server, path: str, accept: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(server.url + path, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_the_card_is_markdown_by_default(served):
    status, kind, body = _get(served, "/v2/models/tiny/card")
    assert status == 200 and kind == "text/markdown; charset=utf-8"
    assert body.decode() == (served.repo / "tiny" / "3" / card.CARD_MD).read_text()
    assert body.startswith(b"# Model card: tiny version 3\n")


@pytest.mark.parametrize("path, accept", [("/v2/models/tiny/card", "application/json"),
                                          ("/v2/models/tiny/card?format=json", None),
                                          ("/v2/models/tiny/versions/3/card?format=JSON", "text/markdown")])
def test_json_when_the_client_asks(served, path, accept):
    status, kind, body = _get(served, path, accept)
    assert status == 200 and kind == "application/json"
    doc = json.loads(body)
    assert doc["model_details"]["name"] == "tiny" and doc["model_details"]["version"]["name"] == "3"
    assert doc["blessing"]["blessed"] is None  # deployed by hand: no select step blessed it


def test_an_older_version_on_disk_serves_its_own_card(served):
    status, _, body = _get(served, "/v2/models/tiny/versions/1/card")
    assert status == 200 and body.startswith(b"# Model card: tiny version 1\n")


@pytest.mark.parametrize("path, status, message", [
    ("/v2/models/nope/card", 404, "unknown model 'nope'; available: ['tiny']"),
    ("/v2/models/tiny/versions/9/card", 404, "model 'tiny' has no version '9'; deployed: ['1', '2', '3']"),
    ("/v2/models/tiny/versions/2/card", 404, "model tiny version 2 has no model card: it was deployed before model "
                                             "cards or by hand; deploy it again to write one"),
    ("/v2/models/tiny/card?format=xml", 400, "format must be json or markdown, got 'xml'"),
])
def test_what_is_missing_is_said(served, path, status, message):
    got, kind, body = _get(served, path)
    assert (got, kind) == (status, "application/json") and json.loads(body) == {"error": message}
