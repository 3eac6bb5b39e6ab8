"""The search page of ``etva serve`` (``GET /``): one static HTML document, no server-side values in it.

The page posts queries to ``/search``; on a 401 it asks for the token once and posts it to ``/login``,
which answers with an HttpOnly, SameSite=Strict cookie that every later request (the searches, the
``<img>`` thumbnails and the ``<a>`` clip links) carries by itself (docs/serving.md says why a cookie).
Results are built with ``createElement`` and ``textContent`` only: a file name is text, never markup.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>etva search</title>
<style>body{font-family:sans-serif} .hit{display:inline-block;margin:4px;font-size:12px;vertical-align:top}
img{display:block}</style></head><body><h1>etva search</h1>
<form id="login" hidden><label>token <input id="token" type="password" autocomplete="current-password"
size="40"></label><button id="signin">sign in</button></form>
<form id="f"><input id="q" name="q" size="50" placeholder="a red circle moves left">
<input id="k" name="k" type="number" value="8" min="1" max="100"><button id="go">search</button></form>
<p id="status"></p><div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
const say = (text) => { $("status").textContent = text; };

function hit(h) {
  const d = document.createElement("div");
  d.className = "hit";
  if (h.thumbnail) {
    const img = document.createElement("img");
    img.className = "thumb"; img.src = h.thumbnail; img.alt = h.video_id;
    d.appendChild(img);
  } else {
    d.appendChild(document.createTextNode("(no preview)"));
  }
  d.appendChild(document.createTextNode("#" + h.rank + " " + h.score.toFixed(3)));
  d.appendChild(document.createElement("br"));
  const name = document.createElement(h.clip ? "a" : "span");
  if (h.clip) { name.className = "clip"; name.href = h.clip; }
  name.textContent = h.video_id;
  d.appendChild(name);
  return d;
}

async function search() {
  const body = JSON.stringify({q: $("q").value, k: Number($("k").value)});
  const r = await fetch("/search", {method: "POST", headers: {"Content-Type": "application/json"}, body: body});
  const data = await r.json();
  $("results").replaceChildren();
  if (r.status === 401) { $("login").hidden = false; $("token").focus(); say("sign in with the token"); return; }
  if (!r.ok) { say("error: " + data.detail); return; }
  say(data.results.length + " results (" + data.model + " v" + data.version + ")");
  $("results").replaceChildren(...data.results.map(hit));
}

$("f").onsubmit = (ev) => { ev.preventDefault(); search(); };
$("login").onsubmit = async (ev) => {
  ev.preventDefault();
  const r = await fetch("/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify({token: $("token").value})});
  $("token").value = "";
  if (!r.ok) { say("wrong token"); return; }
  $("login").hidden = true;
  search();
};
</script></body></html>
"""
