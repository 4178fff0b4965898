// Identity Animator: keypoint preview on the pose nodes, and joint editing on Pose Edit.
// Reads the node's `openpose_json` UI output (the same key comfyui_controlnet_aux uses).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PREVIEW_NODES = new Set([
  "IDA_DWPoseExtract", "IDA_PoseAlign", "IDA_LoadPoseKeypoints", "IDA_SavePoseKeypoints", "IDA_PoseEdit",
]);
const LIMBS = [[1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11], [11, 12],
  [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17]];
const PERSON_COLORS = ["#ff5a5a", "#4fa3ff", "#4fd17a", "#ffb02e", "#c36bff", "#2fd6d6", "#ff7ac8", "#c8c8c8"];
const PICK_RADIUS = 10; // screen pixels

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
    this.element = document.createElement("div");
    this.element.className = "ida-pose-preview";
    this.element.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "flex:1;min-height:120px;width:100%;background:#111;border-radius:4px;cursor:default;";
    this.slider = document.createElement("input");
    this.slider.type = "range";
    this.slider.min = "0";
    this.slider.value = "0";
    this.slider.className = "ida-pose-frame";
    this.label = document.createElement("div");
    this.label.className = "ida-pose-label";
    this.label.style.cssText = "font:11px sans-serif;color:#aaa;";
    this.label.textContent = "Run the node to see its keypoints.";
    this.element.append(this.canvas, this.slider, this.label);
    this.slider.addEventListener("input", () => { this.frame = Number(this.slider.value); this.draw(); });
    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  setBackgrounds(files) {
    // frame images saved by Pose Extract (small JPEGs in ComfyUI's temp folder)
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
    const bg = this.backgrounds?.[this.frame];
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
        { serialize: false, getMinHeight: () => 220 });
      this.setSize([Math.max(this.size[0], 340), Math.max(this.size[1], 320)]);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const json = message?.openpose_json?.[0];
      if (!json || !this.idaPosePreview) return;
      this.idaPosePreview.setBackgrounds(message.ida_frames);
      this.idaPosePreview.setFrames(JSON.parse(json));
    };
  },
});
