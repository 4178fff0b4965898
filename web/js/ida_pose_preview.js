// Identity Animator: keypoint preview on the pose nodes, and joint editing on Pose Edit.
// Reads the node's `openpose_json` UI output (the same key comfyui_controlnet_aux uses), the frame
// pictures in `ida_frames` and Pose Align's `ida_report`. A play button steps through the frames
// (looping), and the frame scrubbers of all pose previews in one graph move together.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PREVIEW_NODES = new Set([
  "IDA_DWPoseExtract", "IDA_PoseAlign", "IDA_LoadPoseKeypoints", "IDA_SavePoseKeypoints", "IDA_PoseEdit",
]);
const LIMBS = [[1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11], [11, 12],
  [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17]];
const PERSON_COLORS = ["#ff5a5a", "#4fa3ff", "#4fd17a", "#ffb02e", "#c36bff", "#2fd6d6", "#ff7ac8", "#c8c8c8"];
const PICK_RADIUS = 10; // screen pixels
const PLAY_FPS = 8;     // slow enough to follow a joint, fast enough to read the motion
const MIN_HEIGHT = 220; // preview canvas, scrubber row and label
const REPORT_LINE = 14; // px per line of the report under the label (font 11px)
const REPORT_MAX_LINES = 12; // past this the report scrolls
const REPORT_CHARS = 44;  // about what fits on one line of a 340 px node: the node is sized by it

function triples(flat) {
  const out = [];
  for (let i = 0; flat && i + 2 < flat.length; i += 3) out.push([flat[i], flat[i + 1], flat[i + 2]]);
  return out;
}

class PosePreview {
  constructor(node, editable) {
    this.node = node;
    this.editable = editable;
    this.frames = [];
    this.frame = 0;
    this.drag = null;
    this.timer = null;
    this.reportText = "";
    this.element = document.createElement("div");
    this.element.className = "ida-pose-preview";
    this.element.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "flex:1;min-height:120px;width:100%;background:#111;border-radius:4px;cursor:default;";
    this.playButton = document.createElement("button");
    this.playButton.type = "button";
    this.playButton.className = "ida-pose-play";
    this.playButton.style.cssText = "flex:none;width:28px;height:22px;padding:0;font:12px sans-serif;cursor:pointer;" +
      "background:#333;color:#ddd;border:1px solid #555;border-radius:4px;";
    this.slider = document.createElement("input");
    this.slider.type = "range";
    this.slider.min = "0";
    this.slider.value = "0";
    this.slider.className = "ida-pose-frame";
    this.slider.style.cssText = "flex:1;min-width:0;";
    const controls = document.createElement("div");
    controls.className = "ida-pose-controls";
    controls.style.cssText = "display:flex;align-items:center;gap:6px;";
    controls.append(this.playButton, this.slider);
    this.label = document.createElement("div");
    this.label.className = "ida-pose-label";
    this.label.style.cssText = "font:11px sans-serif;color:#aaa;";
    this.label.textContent = "Run the node to see its keypoints.";
    // Pose Align's report: the fitted transform, on the node where the artist looks, not only in the log
    this.report = document.createElement("div");
    this.report.className = "ida-pose-report";
    this.report.style.cssText = "display:none;flex:none;font:11px/14px monospace;color:#ccc;white-space:pre-wrap;" +
      `overflow-wrap:anywhere;max-height:${REPORT_LINE * REPORT_MAX_LINES}px;overflow:auto;`;
    this.element.append(this.canvas, controls, this.label, this.report);
    this.showPlaying();
    this.playButton.addEventListener("click", (e) => { e.stopPropagation(); this.togglePlay(); });
    // keep a click on the button from starting a node drag or selection on the graph canvas
    this.playButton.addEventListener("pointerdown", (e) => e.stopPropagation());
    this.slider.addEventListener("input", () => this.setFrame(Number(this.slider.value), true));
    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  setBackgrounds(files) {
    // frame images saved by Pose Extract (small JPEGs in ComfyUI's temp folder); Pose Align sends
    // one, the reference picture, which stands behind every frame
    this.backgrounds = (files || []).map((f) => {
      const img = new Image();
      const q = new URLSearchParams({ filename: f.filename, subfolder: f.subfolder || "", type: f.type || "temp" });
      img.src = api.apiURL(`/view?${q}`);  // honours a sub-path / proxy prefix (api_base)
      img.onload = () => this.draw();
      return img;
    });
  }

  setFrames(frames) {
    this.frames = Array.isArray(frames) ? frames : [frames];
    this.frame = Math.min(this.frame, Math.max(0, this.frames.length - 1));
    this.slider.max = String(Math.max(0, this.frames.length - 1));
    this.slider.value = String(this.frame);
    this.draw();
  }

  // Show frame `index` (clamped to this node's frames). With `link`, the other pose previews of the
  // same graph follow; they are moved without `link`, so nothing echoes back.
  setFrame(index, link = false) {
    const last = Math.max(0, this.frames.length - 1);
    this.frame = Math.min(Math.max(0, Math.round(Number(index) || 0)), last);
    this.slider.value = String(this.frame);
    this.draw();
    if (link) for (const other of this.peers()) other.setFrame(index, false);
  }

  // the pose previews on the other nodes of this node's graph (a subgraph is its own graph)
  peers() {
    const graph = this.node.graph;
    const nodes = graph?.nodes ?? graph?._nodes ?? [];
    return nodes.filter((n) => n !== this.node && n.idaPosePreview).map((n) => n.idaPosePreview);
  }

  get playing() { return this.timer !== null; }

  togglePlay() { if (this.playing) this.pause(); else this.play(); }

  play() {
    if (this.playing || this.frames.length < 2) return;
    // one player per graph: the others follow this one through the linked scrubbers
    for (const other of this.peers()) other.pause();
    this.timer = setInterval(() => this.step(), 1000 / PLAY_FPS);
    this.showPlaying();
  }

  pause() {
    if (!this.playing) return;
    clearInterval(this.timer);
    this.timer = null;
    this.showPlaying();
  }

  step() {
    if (!this.node.graph || this.frames.length < 2) { this.pause(); return; }  // node removed, or nothing to play
    this.setFrame((this.frame + 1) % this.frames.length, true);  // loops: a dance is easiest judged on repeat
  }

  showPlaying() {
    this.playButton.textContent = this.playing ? "\u275a\u275a" : "\u25b6";
    this.playButton.title = this.playing ? "Pause" : `Play the frames (${PLAY_FPS} fps, loops)`;
  }

  setReport(text) {
    this.reportText = typeof text === "string" ? text.trim() : "";
    this.report.textContent = this.reportText;
    this.report.style.display = this.reportText ? "block" : "none";
    // grow the node so the report does not squeeze the preview away
    const size = this.node.computeSize?.();
    if (size && this.node.size && size[1] > this.node.size[1]) this.node.setSize([this.node.size[0], size[1]]);
    this.node.setDirtyCanvas?.(true, true);
  }

  minHeight() {
    // counted, not measured: the report may not be laid out yet when the node is sized
    const lines = this.reportText.split("\n").reduce((n, l) => n + Math.max(1, Math.ceil(l.length / REPORT_CHARS)), 0);
    return MIN_HEIGHT + (this.reportText ? Math.min(REPORT_MAX_LINES, lines) * REPORT_LINE + 4 : 0);
  }

  // canvas-pixel <-> keypoint-pixel transform for the current frame (letterboxed)
  view() {
    const f = this.frames[this.frame];
    const cw = this.canvas.clientWidth || 300, ch = this.canvas.clientHeight || 200;
    const w = f?.canvas_width || 1, h = f?.canvas_height || 1;
    const s = Math.min(cw / w, ch / h);
    return { s, ox: (cw - w * s) / 2, oy: (ch - h * s) / 2, cw, ch, w, h };
  }

  // keypoints may be pixels (controlnet_aux, ours) or normalised (OpenPose node)
  toPixels(x, y, f) {
    return (Math.abs(x) <= 1 && Math.abs(y) <= 1) ? [x * f.canvas_width, y * f.canvas_height] : [x, y];
  }

  draw() {
    const c = this.canvas, ctx = c.getContext("2d");
    const v = this.view();
    c.width = v.cw; c.height = v.ch;
    ctx.fillStyle = "#111"; ctx.fillRect(0, 0, v.cw, v.ch);
    const f = this.frames[this.frame];
    if (!f) return;
    ctx.fillStyle = "#222"; ctx.fillRect(v.ox, v.oy, v.w * v.s, v.h * v.s);
    const bgs = this.backgrounds || [];
    const bg = bgs.length === 1 ? bgs[0] : bgs[this.frame];
    if (bg?.complete && bg.naturalWidth) {
      ctx.globalAlpha = 0.55;
      ctx.drawImage(bg, v.ox, v.oy, v.w * v.s, v.h * v.s);
      ctx.globalAlpha = 1;
    }
    (f.people || []).forEach((p, i) => {
      const color = PERSON_COLORS[i % PERSON_COLORS.length];
      const body = triples(p.pose_keypoints_2d).map(([x, y, c]) => [...this.toPixels(x, y, f), c]);
      ctx.strokeStyle = color; ctx.lineWidth = 2;
      for (const [a, b] of LIMBS) {
        if (!body[a] || !body[b] || body[a][2] <= 0 || body[b][2] <= 0) continue;
        ctx.beginPath();
        ctx.moveTo(v.ox + body[a][0] * v.s, v.oy + body[a][1] * v.s);
        ctx.lineTo(v.ox + body[b][0] * v.s, v.oy + body[b][1] * v.s);
        ctx.stroke();
      }
      ctx.fillStyle = color;
      body.forEach(([x, y, c]) => {
        if (c <= 0) return;
        ctx.beginPath(); ctx.arc(v.ox + x * v.s, v.oy + y * v.s, 3.5, 0, Math.PI * 2); ctx.fill();
      });
      ctx.globalAlpha = 0.6;
      for (const key of ["face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"]) {
        triples(p[key]).forEach(([x, y, c]) => {
          if (c <= 0) return;
          const [px, py] = this.toPixels(x, y, f);
          ctx.fillRect(v.ox + px * v.s - 1, v.oy + py * v.s - 1, 2, 2);
        });
      }
      ctx.globalAlpha = 1;
    });
    const n = (f.people || []).length;
    this.label.textContent = `frame ${this.frame + 1} / ${this.frames.length} · ${n} ${n === 1 ? "person" : "people"}` +
      (this.editable ? " · drag a joint to move it" : "");
  }

  // screen position (client coordinates) of a body joint; used by the editor and by tests
  jointClientPosition(person, joint) {
    const f = this.frames[this.frame];
    const t = triples(f.people[person].pose_keypoints_2d)[joint];
    const [x, y] = this.toPixels(t[0], t[1], f);
    const v = this.view(), r = this.canvas.getBoundingClientRect();
    const k = r.width / v.cw;  // canvas may be scaled by the graph's zoom
    return [r.left + (v.ox + x * v.s) * k, r.top + (v.oy + y * v.s) * k];
  }

  pick(e) {
    const f = this.frames[this.frame];
    if (!f) return null;
    let best = null;
    (f.people || []).forEach((p, person) => {
      triples(p.pose_keypoints_2d).forEach((t, joint) => {
        if (t[2] <= 0) return;
        const [sx, sy] = this.jointClientPosition(person, joint);
        const d = Math.hypot(sx - e.clientX, sy - e.clientY);
        if (d <= PICK_RADIUS && (!best || d < best.d)) best = { person, joint, d };
      });
    });
    return best;
  }

  onDown(e) {
    if (!this.editable) return;
    const hit = this.pick(e);
    if (!hit) return;
    this.pause();  // the joint is moved on the frame it was grabbed on
    this.drag = hit;
    this.canvas.setPointerCapture(e.pointerId);
    e.stopPropagation(); e.preventDefault();
  }

  onMove(e) {
    if (!this.drag) return;
    const v = this.view(), r = this.canvas.getBoundingClientRect(), k = r.width / v.cw;
    const x = ((e.clientX - r.left) / k - v.ox) / v.s, y = ((e.clientY - r.top) / k - v.oy) / v.s;
    const p = this.frames[this.frame].people[this.drag.person];
    const i = this.drag.joint * 3;
    p.pose_keypoints_2d[i] = x; p.pose_keypoints_2d[i + 1] = y; p.pose_keypoints_2d[i + 2] = 1;
    this.draw();
    e.stopPropagation(); e.preventDefault();
  }

  onUp(e) {
    if (!this.drag) return;
    const { person, joint } = this.drag;
    this.drag = null;
    const t = triples(this.frames[this.frame].people[person].pose_keypoints_2d)[joint];
    this.writeEdit(this.frame, person, joint, [Math.round(t[0] * 10) / 10, Math.round(t[1] * 10) / 10]);
    e.stopPropagation(); e.preventDefault();
  }

  writeEdit(frame, person, joint, xy) {
    const widget = this.node.widgets?.find((w) => w.name === "edits");
    if (!widget) return;
    let edits = {};
    try { edits = JSON.parse(widget.value || "{}"); } catch { edits = {}; }
    edits[frame] ??= {};
    edits[frame][person] ??= {};
    edits[frame][person][joint] = xy;
    widget.value = JSON.stringify(edits);
    widget.callback?.(widget.value);
    this.node.setDirtyCanvas?.(true, true);  // the node's own graph (also inside a subgraph)
    app.canvas?.setDirty?.(true, true);       // not the deprecated app.graph
  }
}

app.registerExtension({
  name: "IdentityAnimator.posePreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PREVIEW_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.idaPosePreview = new PosePreview(this, nodeData.name === "IDA_PoseEdit");
      this.addDOMWidget("pose_preview", "ida_pose_preview", this.idaPosePreview.element,
        { serialize: false, getMinHeight: () => this.idaPosePreview.minHeight() });
      this.setSize([Math.max(this.size[0], 340), Math.max(this.size[1], 320)]);
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.idaPosePreview?.pause();  // no timer left drawing a node that is gone
      return onRemoved?.apply(this, arguments);
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const json = message?.openpose_json?.[0];
      if (!json || !this.idaPosePreview) return;
      this.idaPosePreview.setBackgrounds(message.ida_frames);
      this.idaPosePreview.setFrames(JSON.parse(json));
      this.idaPosePreview.setReport(message.ida_report?.[0]);
    };
  },
});
