/* The reprogram console. Every call goes through the public /v1 API with the bearer token
 * the user signed in with (kept in sessionStorage: this tab only, until sign-out). Any 401
 * sends the user back to sign-in. Data from the server is only ever set as text, never as
 * HTML. No build step: plain ES2020, uPlot for the chart. */
"use strict";

(() => {
  const TOKEN_KEY = "reprogram.token";
  const FINAL = ["succeeded", "failed", "cancelled", "budget_exhausted"];
  const POLL_MS = 1500; // until the job events stream replaces polling
  const PAGE_SIZE = 20;

  // ---- session -------------------------------------------------------------------------

  const token = () => sessionStorage.getItem(TOKEN_KEY);
  let leaving = false; // on the way to sign-in: nothing more to show here

  function toSignIn(reason) {
    leaving = true;
    sessionStorage.removeItem(TOKEN_KEY);
    const params = new URLSearchParams();
    if (reason) params.set("reason", reason);
    const here = location.pathname + location.search;
    if (location.pathname !== "/signin" && here !== "/") params.set("next", here);
    const query = params.toString();
    location.assign("/signin" + (query ? "?" + query : ""));
  }

  // ---- the API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** The API's own error text: `detail` as given, or each refused field as "field: message". */
  function errorText(status, body) {
    const detail = body && typeof body === "object" ? body.detail : undefined;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail
        .map((d) => (d && typeof d === "object" && "message" in d
          ? `${d.field || "body"}: ${d.message}` : String(d)))
        .join("; ");
    }
    return `The server answered ${status}${status >= 500 ? " (a server error; try again)" : ""}.`;
  }

  async function failure(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON: the status says it */
    }
    return new ApiError(response.status, errorText(response.status, body));
  }

  /** fetch /v1 + path with the token; JSON back (or the Response when `raw`). */
  async function api(path, { method = "GET", json, body, raw = false, auth = token() } = {}) {
    const headers = { Authorization: `Bearer ${auth}` };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = typeof json === "string" ? json : JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch("/v1" + path, { method, headers, body, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "The server cannot be reached. Check your connection and try again.");
    }
    if (response.status === 401 && auth === token()) {
      toSignIn("expired");
      throw new ApiError(401, errorText(401, null));
    }
    if (!response.ok) throw await failure(response);
    if (raw) return response;
    return response.status === 204 ? null : response.json();
  }

  /** A multipart POST with upload progress (fetch cannot report it). */
  function upload(path, form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1" + path);
      xhr.setRequestHeader("Authorization", `Bearer ${token()}`);
      xhr.responseType = "text";
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (_) {
          /* not JSON */
        }
        if (xhr.status === 401) {
          toSignIn("expired");
          reject(new ApiError(401, errorText(401, body)));
        } else if (xhr.status >= 200 && xhr.status < 300) {
          resolve(body);
        } else {
          reject(new ApiError(xhr.status, errorText(xhr.status, body)));
        }
      });
      xhr.addEventListener("error", () =>
        reject(new ApiError(0, "The upload failed: the server cannot be reached.")));
      xhr.send(form);
    });
  }

  // ---- small DOM helpers ---------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function showError(node, err) {
    if (leaving) return;
    node.textContent = err ? (err.message || String(err)) : "";
    node.hidden = !err;
  }

  const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const usd = (x) => (x === null || x === undefined ? "–" : `$${Number(x).toFixed(4)}`);
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  const label = (s) => String(s).replace(/_/g, " ");
  const sentence = (s) => label(s).charAt(0).toUpperCase() + label(s).slice(1);

  function badge(status) {
    return el("span", { class: `badge ${status}`, text: label(status) });
  }

  function progressOf(job) {
    const { iteration = 0, iterations } = job.progress || {};
    const value = iterations ? Math.min(1, iteration / iterations) : 0;
    return { iteration, iterations, value };
  }

  /** Re-run `fn` every POLL_MS while `more()` holds, skipping beats while the tab is hidden. */
  function poll(fn, more = () => true) {
    let timer = null;
    const beat = async () => {
      if (!document.hidden) await fn();
      if (more()) timer = setTimeout(beat, POLL_MS);
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer !== null && more()) {
        clearTimeout(timer);
        beat();
      }
    });
    beat();
  }

  async function saveBlob(response, fallbackName) {
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const url = URL.createObjectURL(await response.blob());
    const a = el("a", { href: url, download: match ? match[1] : fallbackName });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---- pages ---------------------------------------------------------------------------

  const pages = {};

  pages.signin = () => {
    const params = new URLSearchParams(location.search);
    if (params.get("reason") === "expired") {
      const note = $("signin-reason");
      note.textContent = "The server refused your token (it expired or was revoked). Sign in again.";
      note.hidden = false;
    }
    let next = params.get("next") || "/";
    if (!next.startsWith("/") || next.startsWith("//")) next = "/"; // this site's pages only
    $("token").focus();
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const candidate = $("token").value.trim();
      if (!candidate) {
        showError($("signin-error"), new Error("Enter your API token."));
        return;
      }
      try {
        await api("/jobs?limit=1", { auth: candidate }); // does the API take it?
      } catch (err) {
        showError($("signin-error"), err);
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, candidate);
      location.assign(next);
    });
  };

  pages.jobs = () => {
    const params = new URLSearchParams(location.search);
    let offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    let total = 0;
    const go = (to) => {
      offset = Math.max(0, to);
      history.replaceState(null, "", offset ? `/?offset=${offset}` : "/");
      refresh();
    };
    $("jobs-prev").addEventListener("click", () => go(offset - PAGE_SIZE));
    $("jobs-next").addEventListener("click", () => go(offset + PAGE_SIZE));

    function row(job) {
      const p = progressOf(job);
      const spend = job.spend || {};
      const result = job.result || {};
      const probe = (result.baselines || {}).linear_probe;
      return el(
        "tr",
        { "data-job": job.id },
        el("th", { scope: "row" }, el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, class: "mono", text: job.id })),
        el("td", {}, badge(job.status)),
        el(
          "td",
          {},
          el("progress", { max: "1", value: String(p.value), "aria-label": `${job.id} iterations` }),
          el("span", { class: "small", text: ` ${int(p.iteration)}/${p.iterations ? int(p.iterations) : "?"}` }),
        ),
        el("td", { class: "num", text: `${int(spend.queries)} / ${spend.max_queries ? int(spend.max_queries) : "–"}` }),
        el("td", { class: "num", text: usd(spend.cost_usd) }),
        el("td", { class: "num", text: pct(result.test_accuracy) }),
        el("td", { class: "num", text: probe ? pct(probe.accuracy) : "–" }),
        el("td", { text: when(job.created_at) }),
      );
    }

    async function refresh() {
      try {
        const response = await api(`/jobs?limit=${PAGE_SIZE}&offset=${offset}`, { raw: true });
        const jobs = await response.json();
        total = parseInt(response.headers.get("X-Total-Count") || `${jobs.length}`, 10);
        if (!jobs.length && offset > 0 && total > 0) return go(Math.floor((total - 1) / PAGE_SIZE) * PAGE_SIZE);
        $("jobs-body").replaceChildren(...jobs.map(row));
        $("jobs-body").setAttribute("aria-busy", "false");
        $("jobs-empty").hidden = total > 0;
        $("jobs-range").textContent = total
          ? `${int(offset + 1)}–${int(offset + jobs.length)} of ${int(total)}` : "";
        $("jobs-prev").disabled = offset === 0;
        $("jobs-next").disabled = offset + jobs.length >= total;
        showError($("jobs-error"), null);
      } catch (err) {
        showError($("jobs-error"), err);
      }
    }
    poll(refresh);
  };

  pages.job = () => {
    const id = document.body.dataset.jobId;
    const path = `/jobs/${encodeURIComponent(id)}`;
    let job = null;
    let chart = null;
    let lastIteration = -1;
    let nClasses = null;
    let programShown = false;

    $("job-cancel").addEventListener("click", async () => {
      $("job-cancel").disabled = true;
      try {
        await api(`${path}/cancel`, { method: "POST" });
        await refresh();
      } catch (err) {
        showError($("job-error"), err);
        $("job-cancel").disabled = false;
      }
    });
    $("job-download").addEventListener("click", async () => {
      try {
        await saveBlob(await api(`${path}/program`, { raw: true }), "program.npz");
        showError($("job-error"), null);
      } catch (err) {
        showError($("job-error"), err);
      }
    });
    $("try-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const files = $("try-files").files;
      const out = $("try-result");
      if (!files.length) {
        showError($("try-error"), new Error("Choose one or more images first."));
        return;
      }
      const form = new FormData();
      for (const f of files) form.append("files", f, f.name);
      out.replaceChildren(el("li", { text: "Asking the oracle…" }));
      try {
        const answer = await api(`${path}/predict`, { method: "POST", body: form });
        out.replaceChildren(
          ...answer.predictions.map((p) =>
            el("li", {}, el("span", { class: "mono", text: p.file }), " → ", el("strong", { text: p.class }))),
          el("li", { class: "help", text: `${int(answer.queries)} queries spent` }),
        );
        showError($("try-error"), null);
      } catch (err) {
        out.replaceChildren();
        showError($("try-error"), err);
      }
    });

    function fact(dl, name, value) {
      dl.append(el("dt", { text: name }), el("dd", { text: value }));
    }

    function render() {
      const final = FINAL.includes(job.status);
      const status = $("job-status");
      status.className = `badge ${job.status}`;
      status.textContent = label(job.status);
      const p = progressOf(job);
      $("job-progress").value = p.value;
      const spend = job.spend || {};
      const result = job.result || {};
      const baselines = result.baselines || {};
      const dl = $("job-facts");
      dl.replaceChildren();
      fact(dl, "Iterations", `${int(p.iteration)} of ${p.iterations ? int(p.iterations) : "?"}`);
      fact(dl, "Queries", `${int(spend.queries)} of ${spend.max_queries ? int(spend.max_queries) : "no cap"}`);
      fact(dl, "Requests", int(spend.requests));
      fact(dl, "Cost", `${usd(spend.cost_usd)}${spend.max_cost_usd ? ` of ${usd(spend.max_cost_usd)}` : ""}`);
      fact(dl, "Test accuracy", pct(result.test_accuracy));
      for (const [name, b] of Object.entries(baselines)) fact(dl, sentence(name), pct(b.accuracy));
      fact(dl, "Oracle", job.oracle || "–");
      fact(dl, "Data set", job.dataset_id || "–");
      if (job.waiting) fact(dl, "Waiting", `until ${when(job.waiting.until)}: ${job.waiting.reason || ""}`);
      fact(dl, "Created", when(job.created_at));
      if (job.finished_at) fact(dl, "Finished", when(job.finished_at));

      $("job-cancel").disabled = final;
      $("job-download").disabled = !final;
      const failure = $("job-failure");
      failure.hidden = !job.error;
      failure.textContent = job.error ? `The job ${label(job.status)}: ${job.error}` : "";

      const choices = job.choices || [];
      $("choices").replaceChildren(...choices.map((c) => el("li", { text: c })));
      $("choices-note").hidden = choices.length > 0;

      const breakdown = result.breakdown || {};
      const rows = Object.entries(breakdown);
      $("cost-table").tBodies[0].replaceChildren(
        ...rows.map(([purpose, v]) =>
          el("tr", {}, el("th", { scope: "row", text: label(purpose) }), el("td", { class: "num", text: int(v.queries) }),
            el("td", { class: "num", text: int(v.requests) }), el("td", { class: "num", text: usd(v.cost_usd) }))),
      );
      $("cost-note").hidden = rows.length > 0;
    }

    async function showProgram() {
      programShown = true;
      const note = $("program-note");
      try {
        const response = await api(`${path}/program?format=png`, { raw: true });
        const img = $("program-image");
        img.src = URL.createObjectURL(await response.blob());
        img.alt = `The learned input program of job ${id}: the frame of pixels added around each image`;
        img.hidden = false;
        note.textContent = "The additive program P, as applied around the embedded image.";
      } catch (err) {
        if (!leaving) note.textContent = err.message;
      }
    }

    async function dataset() {
      if (nClasses !== null || !job.dataset_id) return;
      try {
        const ds = await api(`/datasets/${encodeURIComponent(job.dataset_id)}`);
        nClasses = ds.classes.length;
      } catch (_) {
        nClasses = 0; // the chart goes without its chance line
      }
    }

    async function curve() {
      const rows = await api(`${path}/metrics`);
      const points = rows.filter((r) => r.kind === "validation" && r.val_acc !== null && r.val_acc !== undefined);
      const baselines = { ...((job.result || {}).baselines || {}) };
      if (!baselines.chance && nClasses) baselines.chance = { accuracy: 1 / nClasses };
      const last = rows.length ? rows[rows.length - 1].queries : 0;
      const xs = [...new Set([0, ...points.map((r) => r.queries), Math.max(last, (job.spend || {}).queries || 0)])]
        .sort((a, b) => a - b);
      const byX = new Map(points.map((r) => [r.queries, r.val_acc]));
      const names = Object.keys(baselines);
      const data = [xs, xs.map((x) => (byX.has(x) ? byX.get(x) : null)),
        ...names.map((n) => xs.map(() => baselines[n].accuracy))];
      const palette = ["#6b7280", "#b45309", "#0f766e", "#7c3aed", "#be123c"];
      const series = [
        { label: "queries" },
        { label: "validation accuracy", stroke: "#1d4ed8", width: 2, spanGaps: true,
          points: { show: true, size: 7 }, value: (u, v) => pct(v) },
        ...names.map((n, i) => ({ label: label(n), stroke: palette[i % palette.length], dash: [6, 4],
          width: 1.5, points: { show: false }, value: (u, v) => pct(v) })),
      ];
      const box = $("curve");
      const width = Math.max(280, box.clientWidth);
      const opts = {
        width, height: 260, series,
        scales: { x: { time: false }, y: { range: [0, 1] } },
        axes: [{ label: "queries (images answered)" },
          { label: "accuracy", values: (u, ticks) => ticks.map((t) => `${Math.round(t * 100)}%`) }],
        legend: { live: true },
      };
      if (chart && chart.series.length === series.length) chart.setData(data);
      else {
        if (chart) chart.destroy();
        box.replaceChildren();
        chart = new uPlot(opts, data, box);
        box.dataset.drawn = "true";
      }
      const latest = points[points.length - 1];
      const summary = latest
        ? `Validation accuracy ${pct(latest.val_acc)} after ${int(latest.queries)} queries` +
          names.map((n) => `; ${label(n)} ${pct(baselines[n].accuracy)}`).join("")
        : "No validation measurements yet";
      box.setAttribute("aria-label", `Learning curve. ${summary}.`);
      $("curve-note").textContent = latest ? `${summary}.` : "The curve appears after the first validation.";
      $("curve-table").tBodies[0].replaceChildren(
        ...points.map((r) => el("tr", {}, el("td", { class: "num", text: int(r.queries) }),
          el("td", { class: "num", text: int(r.iteration) }), el("td", { class: "num", text: pct(r.val_acc) }))),
      );
    }

    new ResizeObserver(() => {
      if (chart) chart.setSize({ width: Math.max(280, $("curve").clientWidth), height: 260 });
    }).observe($("curve"));

    async function refresh() {
      try {
        job = await api(path);
        render();
        await dataset();
        const iteration = (job.progress || {}).iteration || 0;
        const final = FINAL.includes(job.status);
        if (iteration !== lastIteration || final) {
          lastIteration = final ? Infinity : iteration;
          await curve();
        }
        if (final && !programShown) await showProgram();
        showError($("job-error"), null);
      } catch (err) {
        showError($("job-error"), err);
        if (err.status === 404) {
          job = { status: "failed" }; // no such job for this tenant: nothing to poll
          lastIteration = Infinity;
        }
      }
    }
    poll(refresh, () => !job || !FINAL.includes(job.status) || lastIteration !== Infinity);
  };

  pages.new = () => {
    const kind = $("oracle-kind");
    let credentials = [];

    async function loadDatasets(selected) {
      const list = await api("/datasets?limit=200");
      const select = $("dataset");
      select.replaceChildren(
        ...(list.length ? [] : [el("option", { value: "", text: "Upload a data set first" })]),
        ...list.slice().reverse().map((d) =>
          el("option", { value: d.id, text: `${d.filename} · ${d.n_samples} images · ${d.classes.length} classes (${d.id})` })),
      );
      if (selected) select.value = selected;
    }

    function showCredentials() {
      const k = kind.value;
      $("cloud-fields").hidden = k === "torch";
      for (const div of document.querySelectorAll("#cloud-fields [data-for]")) div.hidden = div.dataset.for !== k;
      const mine = credentials.filter((c) => c.provider === k);
      $("credential").replaceChildren(
        ...(mine.length ? [] : [el("option", { value: "", text: `No ${k} credential stored` })]),
        ...mine.map((c) => el("option", { value: c.id, text: c.name ? `${c.name} (${c.id})` : c.id })),
      );
    }
    kind.addEventListener("change", showCredentials);

    function formSpec() {
      const k = kind.value;
      const oracle = { kind: k };
      const value = (id) => $(id).value.trim();
      if (k === "clarifai" && value("model-id")) oracle.model_id = value("model-id");
      if (k === "customvision") {
        if (value("project-id")) oracle.project_id = value("project-id");
        if (value("published-name")) oracle.published_name = value("published-name");
      }
      if (k !== "torch") {
        if (value("endpoint")) oracle.endpoint = value("endpoint");
        if (value("credential")) oracle.credential_id = value("credential");
      }
      const spec = { dataset_id: value("dataset") || undefined, oracle, budget: {} };
      // Numbers go as typed: the API refuses what is out of range, naming the field.
      const number = (id) => {
        const raw = value(id);
        if (raw === "") return undefined;
        const n = Number(raw);
        return Number.isFinite(n) ? n : raw;
      };
      if (number("max-queries") !== undefined) spec.budget.max_queries = number("max-queries");
      if (number("max-cost") !== undefined) spec.budget.max_cost_usd = number("max-cost");
      return spec;
    }

    const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
    function merge(base, over) {
      const out = { ...base };
      for (const [k, v] of Object.entries(over)) out[k] = isObject(v) && isObject(base[k]) ? merge(base[k], v) : v;
      return out;
    }

    $("spec-from-form").addEventListener("click", () => {
      $("spec-json").value = JSON.stringify(formSpec(), null, 2);
    });

    $("upload-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = $("upload-file").files[0];
      const bar = $("upload-progress");
      showError($("upload-error"), null);
      if (!file) {
        showError($("upload-error"), new Error("Choose a .zip or .npz file first."));
        return;
      }
      const form = new FormData();
      form.append("file", file, file.name);
      bar.hidden = false;
      bar.value = 0;
      $("upload-result").textContent = `Uploading ${file.name}…`;
      try {
        const ds = await upload("/datasets", form, (f) => { bar.value = Math.round(100 * f); });
        bar.value = 100;
        $("upload-result").textContent =
          `Uploaded ${ds.id}: ${int(ds.n_samples)} images, classes ${ds.classes.join(", ")}.`;
        await loadDatasets(ds.id);
      } catch (err) {
        bar.hidden = true;
        $("upload-result").textContent = "";
        showError($("upload-error"), err);
      }
    });

    $("job-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = $("job-form-error");
      showError(error, null);
      let body = formSpec();
      const text = $("spec-json").value.trim();
      if (text) {
        let advanced;
        try {
          advanced = JSON.parse(text);
        } catch (_) {
          advanced = undefined;
        }
        // Not an object: send it as typed, and show the API's own refusal.
        body = isObject(advanced) ? merge(body, advanced) : text;
      }
      try {
        const created = await api("/jobs", { method: "POST", json: body });
        location.assign(`/jobs/${encodeURIComponent(created.id)}`);
      } catch (err) {
        showError(error, err);
        error.focus();
      }
    });

    (async () => {
      try {
        const [, creds] = await Promise.all([loadDatasets(), api("/credentials?limit=200")]);
        credentials = creds;
        showCredentials();
      } catch (err) {
        showError($("job-form-error"), err);
      }
    })();
  };

  pages.account = () => {
    async function loadCredentials() {
      try {
        const list = await api("/credentials?limit=200");
        $("creds-table").tBodies[0].replaceChildren(
          ...list.map((c) =>
            el("tr", {}, el("td", { class: "mono", text: c.id }), el("td", { text: c.provider }),
              el("td", { text: c.name || "–" }),
              el("td", {}, el("button", {
                type: "button", class: "secondary", text: "Delete",
                "aria-label": `Delete credential ${c.name || c.id}`,
                onclick: () => remove(c),
              })))),
        );
        $("creds-empty").hidden = list.length > 0;
        showError($("creds-error"), null);
      } catch (err) {
        showError($("creds-error"), err);
      }
    }

    async function remove(c) {
      if (!confirm(`Delete credential ${c.name || c.id}? Jobs can no longer use it.`)) return;
      try {
        await api(`/credentials/${encodeURIComponent(c.id)}`, { method: "DELETE" });
        await loadCredentials();
      } catch (err) {
        showError($("creds-error"), err);
      }
    }

    $("cred-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { provider: $("cred-provider").value, secret: $("cred-secret").value };
      if ($("cred-name").value.trim()) body.name = $("cred-name").value.trim();
      try {
        await api("/credentials", { method: "POST", json: body });
        $("cred-secret").value = "";
        $("cred-name").value = "";
        showError($("cred-form-error"), null);
        await loadCredentials();
      } catch (err) {
        showError($("cred-form-error"), err);
      }
    });

    async function loadSpend() {
      try {
        const spend = await api("/spend");
        const dl = $("spend-total");
        dl.replaceChildren(
          el("dt", { text: "Queries" }), el("dd", { text: int(spend.total.queries) }),
          el("dt", { text: "Requests" }), el("dd", { text: int(spend.total.requests) }),
          el("dt", { text: "Cost" }), el("dd", { text: usd(spend.total.cost_usd) }),
        );
        const rows = (obj, link) => Object.entries(obj).map(([k, v]) =>
          el("tr", {},
            el("th", { scope: "row" }, link ? el("a", { href: `/jobs/${encodeURIComponent(k)}`, class: "mono", text: k }) : k),
            el("td", { class: "num", text: int(v.queries) }), el("td", { class: "num", text: int(v.requests) }),
            el("td", { class: "num", text: usd(v.cost_usd) })));
        const none = () => el("tr", {}, el("td", { colspan: "4", class: "none", text: "Nothing spent yet." }));
        const byOracle = rows(spend.by_oracle, false);
        const byJob = rows(spend.by_job, true);
        $("spend-oracle").tBodies[0].replaceChildren(...(byOracle.length ? byOracle : [none()]));
        $("spend-job").tBodies[0].replaceChildren(...(byJob.length ? byJob : [none()]));
        showError($("spend-error"), null);
      } catch (err) {
        showError($("spend-error"), err);
      }
    }

    loadCredentials();
    loadSpend();
  };

  // ---- start ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page !== "signin" && !token()) {
      toSignIn();
      return;
    }
    const signOut = $("sign-out");
    if (signOut) {
      signOut.addEventListener("click", () => {
        sessionStorage.removeItem(TOKEN_KEY);
        location.assign("/signin");
      });
    }
    if (pages[page]) pages[page]();
  });
})();
