// jobgrid job page: /job/<id>, from GET /jobs/<id> and GET /jobs/<id>/result; refreshes until finished.
"use strict";
const jobId = decodeURIComponent(location.pathname.split("/").pop());
document.getElementById("job-id").textContent = jobId;
const set = (id, v) => { document.getElementById(id).textContent = v ?? ""; };

async function get(path) {
  const r = await fetch(path, {credentials: "same-origin", headers: {Accept: "application/json"}});
  return {ok: r.ok, status: r.status, body: await r.json().catch(() => ({}))};
}

function showValue(res) {
  if (res.state === "succeeded") {
    if (res.value_format === "json" && res.value) {
      try { return atob(res.value); } catch (e) { return res.value; }
    }
    if (res.value_format === "pickle") return "(a pickled Python value, " + Math.floor((res.value || "").length * 3 / 4) + " bytes)";
    return "exit code " + (res.exit_code ?? 0);
  }
  return (res.error_type ? res.error_type + ": " : "") + (res.error || "");
}

async function refresh() {
  const st = await get("/jobs/" + encodeURIComponent(jobId));
  if (!st.ok) { set("state", st.body.error || ("HTTP " + st.status)); return true; }
  const j = st.body;
  set("kind", j.kind || ""); set("name", j.name || ""); set("state", j.state); set("where", j.node || j.owner || "");
  set("attempts", j.attempts);
  document.getElementById("state").className = j.state;
  if (!["succeeded", "failed", "cancelled"].includes(j.state)) return false;
  const r = await get("/jobs/" + encodeURIComponent(jobId) + "/result");
  if (!r.ok) return false;
  const res = r.body;
  if (res.finished_at && res.started_at) set("duration", (res.finished_at - res.started_at).toFixed(3) + " s");
  set("result", showValue(res)); set("stdout", res.stdout); set("stderr", res.stderr);
  set("traceback", res.traceback);
  document.body.dataset.done = "1";
  return true;
}

(async function loop() {
  let done = false;
  try { done = await refresh(); } catch (e) { set("state", "error: " + e.message); }
  if (!done) setTimeout(loop, 1000);
})();
