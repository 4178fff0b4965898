// Identity Animator: on Face Refine Sampler (HJB), the four churn settings act only with the heun_churn
// sampler, so they are greyed out and locked while sampler is euler (LiteGraph's own disabled look: the
// one a widget gets when an input is linked to it), and given back for heun_churn. Applied when the node
// is created, when a workflow is loaded and whenever sampler changes. Their values are kept and saved.
import { app } from "../../../scripts/app.js";

const NODE = "IDA_FaceRefineSampler";
const CHOICE = "sampler";
const USES_THEM = "heun_churn";
const HEUN_ONLY = ["s_churn", "s_tmin", "s_tmax", "s_noise"];

function widget(node, name) {
  return Array.isArray(node?.widgets) ? node.widgets.find((w) => w?.name === name) : undefined;
}

function applySampler(node) {
  const choice = widget(node, CHOICE);
  if (!choice) return;
  const off = choice.value !== USES_THEM;
  let changed = false;
  for (const name of HEUN_ONLY) {
    const w = widget(node, name);
    if (!w || Boolean(w.disabled) === off) continue;
    w.disabled = off;
    changed = true;
  }
  if (changed) node.setDirtyCanvas?.(true, true);
}

function watchChoice(node) {
  const choice = widget(node, CHOICE);
  if (!choice || choice.idaRefineWatched) return;
  choice.idaRefineWatched = true;
  const callback = choice.callback;
  choice.callback = function (...args) {
    const out = callback?.apply(this, args);
    applySampler(node);
    return out;
  };
}

function chain(proto, method, after) {
  const before = proto[method];
  proto[method] = function (...args) {
    const out = before?.apply(this, args);
    try {
      after(this, args);
    } catch (err) {
      console.warn(`Identity Animator: ${NODE} ${method}:`, err);
    }
    return out;
  };
}

app.registerExtension({
  name: "IdentityAnimator.refineWidgets",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", (node) => { watchChoice(node); applySampler(node); });
    // a loaded workflow sets the widget values after the node is created
    chain(proto, "onConfigure", (node) => { watchChoice(node); applySampler(node); });
    // changes that do not go through the widget's callback (the host calls this for canvas edits too)
    chain(proto, "onWidgetChanged", (node, [name]) => { if (name === CHOICE) applySampler(node); });
  },
});
