"""A flame graph (SVG) from collapsed stacks ("a;b;c 12" per line, as py-spy's raw format
writes them): root at the bottom, a frame's width its share of samples, its title the
function and count. Small and dependency-free, so the bench needs nothing else."""

from __future__ import annotations

from html import escape
from pathlib import Path

__all__ = ["write_flame_svg"]

WIDTH = 1200.0
ROW = 16.0
MIN_WIDTH = 0.5  # narrower frames are not drawn (the file stays small)


class _Node:
    __slots__ = ("children", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.children: dict[str, _Node] = {}


def _tree(collapsed: Path) -> tuple[_Node, int]:
    root = _Node("all")
    depth = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        root.count += n
        node = root
        frames = stack.split(";")
        depth = max(depth, len(frames))
        for frame in frames:
            node = node.children.setdefault(frame, _Node(frame))
            node.count += n
    return root, depth + 1


def _colour(name: str) -> str:
    h = sum(name.encode()) % 60
    return f"rgb({205 + h // 2},{80 + h * 2},{40 + h // 3})"


def write_flame_svg(collapsed: Path, svg: Path, *, title: str = "") -> None:
    root, depth = _tree(collapsed)
    height = (depth + 2) * ROW
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0f}" '
             f'height="{height:.0f}" font-family="monospace" font-size="11">',
             f'<text x="4" y="12">{escape(title)}</text>']
    total = max(1, root.count)
    stack: list[tuple[_Node, float, int]] = [(root, 0.0, 0)]
    while stack:
        node, x, level = stack.pop()
        w = WIDTH * node.count / total
        if w < MIN_WIDTH:
            continue
        y = height - (level + 1) * ROW
        label = escape(f"{node.name} ({node.count} samples, {100 * node.count / total:.1f}%)")
        parts.append(f'<g><title>{label}</title><rect x="{x:.1f}" y="{y:.1f}" '
                     f'width="{w:.1f}" height="{ROW - 1:.0f}" fill="{_colour(node.name)}"/>')
        if w > 40:
            chars = int(w / 7)
            text = node.name if len(node.name) <= chars else node.name[:chars - 2] + ".."
            parts.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 4:.1f}">{escape(text)}</text>')
        parts.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            stack.append((child, cx, level + 1))
            cx += WIDTH * child.count / total
    parts.append("</svg>")
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text("\n".join(parts) + "\n")
