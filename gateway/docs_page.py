"""GET /docs: a self-contained page that renders /openapi.json (no CDN, no docs package)."""

from __future__ import annotations

DOCS_HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shop REST API</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.5rem} .op{border:1px solid #ddd;border-radius:6px;margin:.6rem 0;padding:.5rem .8rem}
.m{display:inline-block;min-width:4.2rem;font-weight:700;text-transform:uppercase}
.get{color:#07a}.post{color:#080}.delete{color:#b00}.put,.patch{color:#a60}
code{background:#f4f4f4;padding:0 .25rem;border-radius:3px} .lock{color:#a60;font-size:.85em}
details{margin:.3rem 0} pre{background:#f8f8f8;padding:.5rem;overflow:auto;font-size:12px}
</style></head><body>
<h1 id="title">shop REST API</h1><p id="desc"></p><div id="ops">Loading /openapi.json ...</div>
<h2>Schemas</h2><div id="schemas"></div>
<script>
"use strict";
function el(tag, cls, text){const e=document.createElement(tag);if(cls)e.className=cls;
  if(text!==undefined)e.textContent=text;return e;}
fetch("/openapi.json").then(r=>r.json()).then(spec=>{
  document.getElementById("title").textContent=spec.info.title+" "+spec.info.version;
  document.getElementById("desc").textContent=spec.info.description||"";
  const ops=document.getElementById("ops"); ops.textContent="";
  for(const [path,item] of Object.entries(spec.paths)){
    for(const [method,op] of Object.entries(item)){
      const box=el("div","op"); const head=el("div");
      head.appendChild(el("span","m "+method,method)); head.appendChild(el("code","",path));
      if(op.security) head.appendChild(el("span","lock"," bearer"));
      head.appendChild(el("span",""," - "+(op.summary||op.operationId)));
      box.appendChild(head);
      const params=(op.parameters||[]).map(p=>p.name+" ("+p.in+")").join(", ");
      if(params) box.appendChild(el("div","","Parameters: "+params));
      const d=el("details"); d.appendChild(el("summary","","Request / responses"));
      d.appendChild(el("pre","",JSON.stringify({requestBody:op.requestBody,
        responses:op.responses},null,2)));
      box.appendChild(d); ops.appendChild(box);
    }
  }
  const sc=document.getElementById("schemas");
  for(const [name,schema] of Object.entries(spec.components.schemas||{})){
    const d=el("details"); d.appendChild(el("summary","",name));
    d.appendChild(el("pre","",JSON.stringify(schema,null,2))); sc.appendChild(d);
  }
}).catch(err=>{document.getElementById("ops").textContent="Could not load spec: "+err;});
</script></body></html>
"""
