// The demo page: a photo goes to POST /predict through the JavaScript client; the fast label shows at
// once, then a waiting read (GET /job/{id}?wait=) brings the slow one, which replaces it.
import { AuthError, TwopassClient } from "./twopass.js";

const $ = (id) => document.getElementById(id);
const api = new URL(".", location.href).href.replace(/\/demo\/?$/, "").replace(/\/$/, "");
const percent = (p) => `${(100 * p).toFixed(1)} %`;
let config = { auth_mode: "apikey", api_key: true };
let idToken = null;

function show(id, visible = true) {
  $(id).hidden = !visible;
}

function error(message) {
  $("error").textContent = message;
  show("error", Boolean(message));
}

function client() {
  const apiKey = $("api-key").value.trim() || null;
  const token = config.auth_mode === "jwt" ? $("token").value.trim() || null : idToken;
  return new TwopassClient({ baseUrl: api, apiKey, token });
}

async function signIn(event) {
  event.preventDefault();
  const { endpoint, client_id: clientId } = config.cognito;
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth" },
    body: JSON.stringify({
      AuthFlow: "USER_PASSWORD_AUTH",
      ClientId: clientId,
      AuthParameters: { USERNAME: $("username").value, PASSWORD: $("password").value },
    }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok || !body.AuthenticationResult) {
    error(`sign-in failed: ${body.message ?? body.__type ?? response.status}`);
    return;
  }
  idToken = body.AuthenticationResult.IdToken;
  $("who").textContent = `Signed in as ${$("username").value}: your jobs are yours alone.`;
  error("");
}

function step(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("timeline").append(item);
}

function since(start, iso) {
  return iso ? `+${Math.max(0, Date.parse(iso) - start)} ms` : "";
}

function answer(kind, label, probability) {
  $("answer-model").textContent = `${kind} model`;
  $("label").textContent = label;
  $("confidence").textContent = percent(probability);
  $("result").querySelector(".answer").classList.toggle("slow", kind === "slow");
}

async function classify(file) {
  error("");
  for (const id of ["fast-label", "fast-confidence", "fast-time", "slow-label", "slow-confidence", "slow-time", "job-id"]) $(id).textContent = "";
  $("slow-model").textContent = "waiting…";
  $("timeline").replaceChildren();
  $("preview").src = URL.createObjectURL(file);
  $("preview").alt = `Your photo: ${file.name}`;
  show("preview");
  show("result");
  const twopass = client();
  const sent = performance.now();
  try {
    const fast = await twopass.predict(file);
    const fastMs = Math.round(performance.now() - sent);
    const top = fast.fast.top_k[0];
    $("fast-model").textContent = fast.fast.model;
    $("fast-label").textContent = fast.fast.label;
    $("fast-confidence").textContent = percent(top.probability);
    $("fast-time").textContent = `(${fastMs} ms)`;
    answer("fast", fast.fast.label, top.probability);
    if (!fast.job_id) {
      $("slow-model").textContent = fast.status === "shed" ? "skipped: the service is busy" : "not needed";
      return;
    }
    $("job-id").textContent = fast.job_id;
    step(`sent, fast label after ${fastMs} ms`);
    const job = await twopass.wait(fast.job_id, { timeoutMs: 120000 });
    const created = Date.parse(job.created_at);
    step(`queued ${job.created_at}`);
    if (job.started_at) step(`running ${since(created, job.started_at)}`);
    step(`${job.status} ${since(created, job.finished_at ?? job.updated_at)}`);
    if (job.status !== "succeeded" || !job.slow) {
      $("slow-model").textContent = `job ${job.status}${job.error ? `: ${job.error}` : ""}`;
      return;
    }
    const best = job.slow.top_k[0];
    $("slow-model").textContent = job.slow.model;
    $("slow-label").textContent = job.slow.label;
    $("slow-confidence").textContent = percent(best.probability);
    $("slow-time").textContent = `(${Math.round(performance.now() - sent)} ms)`;
    answer("slow", job.slow.label, best.probability);
  } catch (failure) {
    const hint = failure instanceof AuthError ? (config.auth_mode === "apikey" ? " (check the API key)" : " (sign in first)") : "";
    error(`${failure.message}${hint}`);
  }
}

function showAuth() {
  show("key-form", config.api_key || config.auth_mode === "apikey");
  show("sign-in", config.auth_mode === "cognito");
  show("token-form", config.auth_mode === "jwt");
  $("who").textContent = config.auth_mode === "apikey" ? "Calls are sent with the API key." : "Sign in: each user sees only their own jobs.";
  document.documentElement.dataset.ready = "true";
}

// Listeners first, so a photo chosen while the configuration loads is not lost.
function listen() {
  const fromFragment = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromFragment) $("api-key").value = fromFragment;
  $("sign-in").addEventListener("submit", (event) => signIn(event).catch((e) => error(`sign-in failed: ${e.message}`)));
  for (const form of ["key-form", "token-form"]) $(form).addEventListener("submit", (event) => event.preventDefault());
  $("photo").addEventListener("change", () => $("photo").files[0] && classify($("photo").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => (event.preventDefault(), drop.classList.add("over")));
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) classify(file);
  });
}

listen();
fetch("demo/config.json")
  .then((response) => response.json())
  .then((body) => (config = body))
  .catch(() => error("could not read the demo's configuration"))
  .finally(showAuth);
