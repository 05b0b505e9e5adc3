"""The web page's files as ldm-serve sends them (no browser needed): their content types, a policy that keeps the
page to this server, nothing outside the listed files, and the credentials guard in front of the page too."""

import base64

import pytest
from fastapi.testclient import TestClient

from ldm.serve.app import create_app
from ldm.serve.catalog import Catalog
from ldm.serve.server import Server, Settings
from ldm.serve.web_routes import FILES


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    out = tmp_path_factory.mktemp("web-routes")
    settings = Settings(outdir=out, lora_dir=out / "none", embeddings_dir=out / "none", users={"ann": "secret"})
    return create_app(Server(Catalog(), settings))  # not started: no route here needs the model


def test_the_page_and_its_files_have_their_content_types_and_policy(app):
    login = {"Authorization": "Basic " + base64.b64encode(b"ann:secret").decode()}
    client = TestClient(app, headers=login)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '"/web/app.js"' in page.text and '"/web/style.css"' in page.text  # app.js imports the other modules
    for name in FILES:
        kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[1]]
        assert client.get(f"/web/{name}").headers["content-type"] == f"{kind}; charset=utf-8"
        assert client.head(f"/web/{name}").status_code == 200
    for script in (n for n in FILES if n.endswith(".js")):
        assert "http" not in client.get(f"/web/{script}").text  # only this server's own routes
    unlisted = client.get("/web/web_routes.py")
    assert unlisted.status_code == 404 and "open / for the page" in unlisted.json()["detail"]
    assert client.get("/web/..%2Fweb_routes.py").status_code == 404


def test_the_credentials_guard_covers_the_page(app):
    answer = TestClient(app).get("/")
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Basic")
