// relay's pages: a little progressive enhancement, no framework. Everything written into
// the page goes through textContent, never innerHTML: values come from producers and
// receivers and are text.
"use strict";

(function () {
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) {
      var span = document.createElement("span");
      span.className = className;
      span.textContent = text;
      td.appendChild(span);
    } else {
      td.textContent = text;
    }
    row.appendChild(td);
    return td;
  }

  // The destination form: does the sample event pass the filter?
  function filterCheck() {
    var button = document.getElementById("check-filter");
    if (!button) return;
    var out = document.getElementById("filter-result");
    button.addEventListener("click", function () {
      out.textContent = "Checking…";
      out.className = "";
      fetch("/portal/filter-check", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({
          filter: document.getElementById("f-filter").value,
          sample: document.getElementById("f-sample").value,
        }),
      })
        .then(function (r) { return r.json(); })
        .then(function (answer) {
          if (!answer.valid) {
            out.textContent = "Not valid: " + (answer.problems || [answer.message]).join("; ");
            out.className = "bad";
          } else if (answer.matches === null) {
            out.textContent = "The filter is valid.";
            out.className = "ok";
          } else {
            out.textContent = answer.matches ? "Matches: this event would be delivered."
              : "Does not match: this event would not be delivered.";
            out.className = answer.matches ? "ok" : "bad";
          }
        })
        .catch(function () { out.textContent = "Could not check the filter."; });
    });
  }

  // The console's live attempts: poll for attempts after the newest one shown.
  function liveAttempts() {
    var table = document.getElementById("live-attempts");
    if (!table) return;
    var body = table.querySelector("tbody");
    var status = document.getElementById("live-status");
    var after = table.getAttribute("data-after") || "0";
    var tenant = table.getAttribute("data-tenant");
    function poll() {
      var url = table.getAttribute("data-feed") + "?after=" + encodeURIComponent(after);
      if (tenant) url += "&tenant_id=" + encodeURIComponent(tenant);
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (rows) {
          rows.forEach(function (a) {
            var tr = document.createElement("tr");
            tr.setAttribute("data-attempt", String(a.id));
            tr.className = "new";
            cell(tr, a.started_at);
            cell(tr, a.tenant_id);
            cell(tr, a.destination_id);
            var ev = cell(tr, "");
            var link = document.createElement("a");
            link.href = "/console/events?id=" + encodeURIComponent(a.event_id) +
              "&tenant_id=" + encodeURIComponent(a.tenant_id);
            link.textContent = a.event_id;
            ev.appendChild(link);
            cell(tr, String(a.number) + (a.manual ? " manual" : ""));
            cell(tr, a.status, "status status-" + a.status);
            cell(tr, a.code || "-");
            cell(tr, String(a.duration_ms) + " ms");
            body.insertBefore(tr, body.firstChild);
            after = String(a.id);
          });
          if (rows.length && status) status.textContent = rows.length + " new attempt(s) just now.";
        })
        .catch(function () { if (status) status.textContent = "Live updates paused; retrying."; })
        .finally(function () { setTimeout(poll, 1500); });
    }
    setTimeout(poll, 1000);
  }

  // The console's replay: follow the job's progress.
  function replayProgress() {
    var box = document.getElementById("replay-job");
    if (!box) return;
    var bar = document.getElementById("replay-bar");
    var status = document.getElementById("replay-status");
    function poll() {
      fetch(box.getAttribute("data-job"), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (job) {
          bar.max = Math.max(job.total, 1);
          bar.value = job.done;
          status.textContent = (job.finished ? "Replayed " + job.done + " of " + job.total + " deliveries."
            : "Replaying: " + job.done + " of " + job.total + "…") + (job.error ? " " + job.error : "");
          if (!job.finished && !job.stalled) setTimeout(poll, 500);
        })
        .catch(function () { setTimeout(poll, 2000); });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    filterCheck();
    liveAttempts();
    replayProgress();
  });
})();
