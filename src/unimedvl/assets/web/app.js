// The unimedvl page: every action is a call to the same HTTP API that scripts use.
"use strict";

const $ = (id) => document.getElementById(id);
let currentFile = null;
let maxTokens = 256;  // lowered to the server's limit once /v1/models answers

function headers(extra) {
  const key = $("api-key").value.trim();
  const h = Object.assign({}, extra || {});
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text || ""; }

async function errorText(response) {
  try { return (await response.json()).error.message; } catch (e) { return response.status + " " + response.statusText; }
}

function readerFields() {
  const fields = {};
  if ($("window").value) fields.window = $("window").value;
  if ($("slice").value !== "") fields.slice = $("slice").value;
  fields.axis = $("axis").value;
  return fields;
}

function mediaType(file) {
  const name = file.name.toLowerCase();
  if (name.endsWith(".dcm") || name.endsWith(".dicom")) return "application/dicom";
  if (name.endsWith(".nii") || name.endsWith(".nii.gz")) return "application/x-nifti";
  return file.type || "application/octet-stream";
}

function dataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve("data:" + mediaType(file) + ";base64," + reader.result.split(",")[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Server-sent events over fetch (POST bodies): calls onEvent(parsed JSON) for every data line.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) { $("model-info").textContent = "model information: " + await errorText(response); return; }
    const model = (await response.json()).data[0];
    const info = model.unimedvl;
    maxTokens = Math.min(256, info.limits.max_new_tokens);
    $("steps").max = info.limits.max_steps;
    const sizes = info.trained_sizes.length ? info.trained_sizes : [info.default_size];
    $("model-info").textContent = model.id + " - " + info.load_mode + " mode" +
      (info.generation ? ", draws at " + sizes.join(" / ") + " px" : ", understanding only");
    $("size").innerHTML = "";
    for (const side of sizes) {
      const option = document.createElement("option");
      option.value = side + "x" + side; option.textContent = side + " x " + side;
      $("size").appendChild(option);
    }
    // Left empty, the guidance fields take the model's recommendation, shown as their placeholders.
    const g = info.guidance;
    $("cfg-text").placeholder = g.text_to_image.text_scale + " / " + g.editing.text_scale;
    $("cfg-text").title = "text guidance: the model's default " + g.text_to_image.text_scale + " (generate), " +
      g.editing.text_scale + " (edit)";
    $("cfg-image").placeholder = String(g.editing.image_scale);
    $("generate").disabled = $("edit").disabled = !info.generation;
  } catch (e) { $("model-info").textContent = "cannot reach the server"; }
}

async function showPreview() {
  if (!currentFile) return;
  const form = new FormData();
  form.append("image", currentFile, currentFile.name);
  for (const [k, v] of Object.entries(readerFields())) form.append(k, v);
  const response = await fetch("/v1/preview", { method: "POST", body: form, headers: headers() });
  if (!response.ok) { setStatus(await errorText(response)); return; }
  const result = await response.json();
  $("preview").src = result.image;
  $("meta").textContent = result.format + (result.modality ? " / " + result.modality : "") + "\n" +
    JSON.stringify(result.metadata, null, 1);
  setStatus("");
}

function chooseFile(file) { currentFile = file; showPreview(); }

async function ask() {
  $("answer").textContent = "";
  setStatus("");
  const content = [{ type: "text", text: $("question").value }];
  const body = { messages: [{ role: "user", content: content }], stream: true, max_tokens: maxTokens };
  if (currentFile) {
    const options = readerFields();
    const imageOptions = { axis: Number(options.axis) };
    if (options.window) imageOptions.window = options.window;
    if (options.slice !== undefined) imageOptions.slice = Number(options.slice);
    content.unshift({ type: "image_url", image_url: { url: await dataURL(currentFile) }, image_options: imageOptions });
  }
  $("ask").disabled = true;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
    if (!response.ok) { setStatus(await errorText(response)); return; }
    await readEvents(response, (event) => {
      if (event.error) { setStatus(event.error.message); return; }
      const delta = event.choices[0].delta;
      if (delta.content) $("answer").textContent += delta.content;
    });
  } finally { $("ask").disabled = false; }
}

function addResult(b64, caption) {
  const figure = document.createElement("figure");
  const image = document.createElement("img");
  image.src = "data:image/png;base64," + b64;
  const text = document.createElement("figcaption");
  text.textContent = caption;
  figure.appendChild(image); figure.appendChild(text);
  $("gallery").prepend(figure);
}

async function draw(kind) {
  setStatus("");
  const prompt = $("prompt").value;
  const steps = $("steps").value;
  let response;
  const busy = [$("generate"), $("edit")];
  busy.forEach((b) => { b.disabled = true; });
  $("progress").value = 0;
  try {
    if (kind === "generate") {
      response = await fetch("/v1/images/generations", {
        method: "POST", headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ prompt: prompt, size: $("size").value, stream: true, response_format: "b64_json",
          num_inference_steps: Number(steps), seed: Date.now() % 100000,
          ...($("cfg-text").value !== "" ? { guidance_scale: Number($("cfg-text").value) } : {}) }) });
    } else {
      if (!currentFile) { setStatus("choose an image to edit first"); return; }
      const form = new FormData();
      form.append("image", currentFile, currentFile.name);
      form.append("prompt", prompt); form.append("stream", "true"); form.append("num_inference_steps", steps);
      if ($("cfg-text").value !== "") form.append("guidance_scale", $("cfg-text").value);
      if ($("cfg-image").value !== "") form.append("image_guidance_scale", $("cfg-image").value);
      for (const [k, v] of Object.entries(readerFields())) form.append(k, v);
      response = await fetch("/v1/images/edits", { method: "POST", body: form, headers: headers() });
    }
    if (!response.ok) { setStatus(await errorText(response)); return; }
    await readEvents(response, (event) => {
      if (event.error) { setStatus(event.error.message); return; }
      if (event.type === "image_generation.progress") { $("progress").max = event.total; $("progress").value = event.step; }
      if (event.type === "image_generation.completed") addResult(event.b64_json, (kind === "edit" ? "edit: " : "") + prompt);
    });
  } finally { busy.forEach((b) => { b.disabled = false; }); }
}

$("drop").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (e) => { if (e.target.files.length) chooseFile(e.target.files[0]); });
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault(); $("drop").classList.remove("over");
  if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});
for (const id of ["window", "slice", "axis"]) $(id).addEventListener("change", showPreview);
$("ask").addEventListener("click", ask);
$("generate").addEventListener("click", () => draw("generate"));
$("edit").addEventListener("click", () => draw("edit"));
$("api-key").addEventListener("change", loadModel);
loadModel();
