"""The studio as a Hugging Face Space: the links a visitor can really use, and keeping the Space page's address in
step with the app's.

A Space page (https://huggingface.co/spaces/OWNER/NAME) shows the app in a cross-site iframe
(https://OWNER-NAME.hf.space). The visitor's address bar shows the Space page, so "bookmark this URL" must name
that page, with the workspace in its query. The Spaces protocol carries only the query and the hash between the
two: the Space page hands its query to the frame on the first load, and a Docker Space posts
{queryString, hash} to its parent for the page's address to change. The page path (/Deploy) cannot travel, so a
page is named in the query too (?page=deploy) and the home page opens it.
"""
from __future__ import annotations

import json
import os
from urllib.parse import urlencode

HUB = "https://huggingface.co"
PARENT_ORIGIN_VARIABLE = "FMNIST_SPACE_PARENT_ORIGIN"
PAGE_PARAMETER = "page"
# Query parameters that say what to open; anything else Streamlit or the Hub adds (embed, __theme) stays local.
CARRIED = ("w", "project", "model", "share", PAGE_PARAMETER)


def space_id() -> str | None:
    """OWNER/NAME of the Space this runs as (Spaces set SPACE_ID), else None."""
    return os.environ.get("SPACE_ID") or None


def parent_origin() -> str:
    """The origin of the page that embeds the app, the only one the address messages go to."""
    return os.environ.get(PARENT_ORIGIN_VARIABLE) or HUB


def query_string(params: dict[str, str], page: str | None = None) -> str:
    """'?w=...&project=...&page=...' from the parameters that say what to open (empty string: nothing to say)."""
    carried = {key: params[key] for key in CARRIED if params.get(key) and key != PAGE_PARAMETER}
    if page:
        carried[PAGE_PARAMETER] = page
    return f"?{urlencode(carried)}" if carried else ""


def direct_base(browser_origin: str) -> str:
    """The app's own address: on a Space its hf.space host (SPACE_HOST), else the origin the browser reached."""
    host = os.environ.get("SPACE_HOST") if space_id() else None
    return f"https://{host}" if host else browser_origin.rstrip("/")


def links(origin: str, params: dict[str, str], page: str | None = None, page_path: str = "") -> list[dict]:
    """The addresses that open `params` (and `page`), best first: on a Space, the Space page's own address (what
    the visitor's address bar shows) and the app's direct one; elsewhere, the direct one only.
    `origin` is the app's origin as the browser reached it; `page_path` is the page's path there (e.g. 'Deploy')."""
    query = query_string(params, page)
    found = []
    if space_id():
        found.append({"label": "This Space's page", "url": f"{HUB}/spaces/{space_id()}{query}"})
    direct_query = query_string(params)  # the direct address carries the page in its path
    found.append({"label": "The app on its own",
                  "url": f"{direct_base(origin)}/{page_path}{direct_query}"})
    return found


def parent_message(params: dict[str, str], page: str | None = None) -> str:
    """HTML with a script that tells the embedding page the address of what is open, so a reload of the Space
    page (or a bookmark of it) opens the same workspace, project and page. Posted only when the app runs in a
    frame, and only to parent_origin(): any other parent (a direct visit, a foreign page) receives nothing."""
    message = json.dumps({"queryString": query_string(params, page)})
    return (f"<!-- address {message} --><script>\n"
            f"if (window.parent !== window) {{ window.parent.postMessage({message}, {json.dumps(parent_origin())}); }}\n"
            "</script>")
