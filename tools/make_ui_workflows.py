"""Write the UI-format workflows (what ComfyUI's template browser loads) from their API-format twins.

  python tools/make_ui_workflows.py     # starts a temporary ComfyUI to read /object_info

Widget values are laid out in each node's /object_info input order (plus the extra value the frontend
keeps after a seed's control widget and after an upload widget), links are rebuilt from the API
references, and nodes are placed left to right by graph depth. A same-name .jpg thumbnail is drawn.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "workflows" / "api"
OUT = ROOT / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
PREVIEW_NODES = {"IDA_DWPoseExtract", "IDA_PoseAlign", "IDA_LoadPoseKeypoints", "IDA_SavePoseKeypoints", "IDA_PoseEdit"}
# UI name -> (API file, title)
WORKFLOWS = {
    "animate_512x512": ("animate_512x512.json", "Animate a reference image (512x512)"),
    "animate_576x1024": ("animate_576x1024.json", "Animate a reference image (576x1024)"),
    "animate_face_refine": ("animate_face_refine.json", "Animate with HJB face refinement"),
    "animate_long_video": ("animate_long_video.json", "Long video with sliding windows"),
    "pose_check": ("pose_check.json", "Check the aligned skeleton before animating"),
    "pose_from_keypoints_json": ("pose_from_keypoints_json.json", "Poses from a POSE_KEYPOINT JSON (comfyui_controlnet_aux)"),
    "face_embed_boxes": ("face_embed_boxes.json", "Face embedding and face boxes"),
}


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_values(node_info: dict, inputs: dict) -> list:
    values = []
    for section in ("required", "optional"):
        for name in node_info["input_order"].get(section, []):
            spec = node_info["input"][section][name]
            if not is_widget(spec):
                continue
            opts = spec[1] if len(spec) > 1 else {}
            value = inputs.get(name, opts.get("default"))
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                raise ValueError(f"{name} is a widget linked to another node; the generator does not convert widgets to inputs")
            values.append(value)
            if opts.get("control_after_generate"):
                values.append("fixed")
            if opts.get("image_upload") or opts.get("video_upload"):
                values.append("image")
    return values


def depth_of(prompt: dict) -> dict[str, int]:
    depth = {}

    def visit(nid):
        if nid not in depth:
            deps = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
            depth[nid] = 1 + max((visit(d) for d in deps), default=-1)
        return depth[nid]

    for nid in prompt:
        visit(nid)
    return depth


def to_ui(prompt: dict, info: dict, title: str) -> dict:
    depth = depth_of(prompt)
    order = sorted(prompt, key=lambda n: (depth[n], int(n)))
    links, nodes, column_y = [], [], {}
    out_links: dict[tuple[str, int], list[int]] = {}
    for nid in order:
        for name, v in prompt[nid]["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                src, slot = v
                t = info[prompt[src]["class_type"]]["output"][slot]
                links.append([len(links) + 1, int(src), slot, int(nid), name, t])
                out_links.setdefault((src, slot), []).append(len(links))
    for k, nid in enumerate(order):
        node, ni = prompt[nid], info[prompt[nid]["class_type"]]
        sockets = []
        for section in ("required", "optional"):
            for name in ni["input_order"].get(section, []):
                spec = ni["input"][section][name]
                if is_widget(spec):
                    continue
                link = next((l[0] for l in links if l[3] == int(nid) and l[4] == name), None)
                sockets.append({"name": name, "type": spec[0], "link": link})
        for l in links:   # the UI format names the target slot by index
            if l[3] == int(nid) and isinstance(l[4], str):
                l[4] = next(i for i, s in enumerate(sockets) if s["name"] == l[4])
        outputs = [{"name": n, "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
                   for i, (n, t) in enumerate(zip(ni["output_name"], ni["output"]))]
        values = widget_values(ni, node["inputs"])
        col = depth[nid]
        y = column_y.get(col, 40)
        height = 60 + 24 * (len(sockets) + len(values)) + 20
        if any((spec[1] if len(spec) > 1 else {}).get(k) for sec in ("required", "optional")
               for spec in ni["input"].get(sec, {}).values() for k in ("image_upload", "video_upload")):
            height += 280    # room for the image/video preview the frontend shows in upload nodes
        elif node["class_type"] in PREVIEW_NODES:
            height += 260    # room for the pose preview widget
        column_y[col] = y + height + 40
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": [40 + 380 * col, y], "size": [340, height],
                      "flags": {}, "order": k, "mode": 0, "inputs": sockets, "outputs": outputs,
                      "title": node.get("_meta", {}).get("title", ni["display_name"]),
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values})
    return {"last_node_id": max(int(n) for n in prompt), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"identity_animator": {"title": title}}, "version": 0.4}


def thumbnail(path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 240), (24, 26, 32))
    d = ImageDraw.Draw(img)
    # a small skeleton in the official palette
    pts = [(160, 60), (160, 90), (130, 92), (118, 130), (112, 165), (190, 92), (202, 130), (208, 165), (142, 160),
           (140, 200), (138, 232), (178, 160), (180, 200), (182, 232)]
    limbs = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0)]
    colors = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
              (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255)]
    for (a, b), c in zip(limbs, colors):
        d.line([pts[a], pts[b]], fill=tuple(int(v * 0.6) for v in c), width=6)
    d.text((10, 8), "Identity Animator", fill=(230, 230, 230))
    d.text((10, 214), title[:48], fill=(200, 200, 200))
    img.save(path, quality=88)


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from ida_server import ComfyServer

    with ComfyServer(ROOT / ".host" / "ComfyUI", Path(tempfile.mkdtemp())) as server:
        info = server.client.get_json("/object_info")
    for name, (api_file, title) in WORKFLOWS.items():
        prompt = json.loads((API / api_file).read_text())
        (OUT / f"{name}.json").write_text(json.dumps(to_ui(prompt, info, title), indent=1) + "\n")
        thumbnail(OUT / f"{name}.jpg", title)
        print(f"wrote workflows/{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
