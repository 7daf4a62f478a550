// The output pane: text appended, never re-set while a run goes on. The text lives in segments of
// about SEGMENT characters, each ending at a line end, laid out as separate boxes: appending
// re-lays out only the last segment, not the whole 100 KB tail (the dashboard bench row measures
// this). Segments are inline-blocks, so copying a selection adds no line breaks between them.
// Text nodes only: event text is never markup.

export const SEGMENT = 8192;

export class OutputView {
  constructor(pre) {
    this.pre = pre;
    this.length = 0;     // characters shown (UTF-16 units, as the reducer's string length)
    this.owner = null;   // the run whose output is shown
  }

  reset(owner, text) {
    this.owner = owner;
    this.pre.replaceChildren();
    this.length = 0;
    this.append(text);
  }

  segment() {
    const last = this.pre.lastElementChild;
    if (last && !(last.chars >= SEGMENT && last.endsLine)) return last;
    const seg = document.createElement("span");
    seg.className = "seg";
    seg.chars = 0;
    seg.endsLine = false;
    this.pre.append(seg);
    return seg;
  }

  append(text) {
    let rest = text;
    while (rest) {
      const seg = this.segment();
      const room = Math.max(0, SEGMENT - seg.chars);
      let cut = rest.length;
      if (rest.length > room) {
        const nl = rest.indexOf("\n", room);
        if (nl !== -1) cut = nl + 1;
      }
      const piece = rest.slice(0, cut);
      rest = rest.slice(cut);
      seg.append(document.createTextNode(piece));
      seg.chars += piece.length;
      seg.endsLine = piece.endsWith("\n");
      this.length += piece.length;
    }
  }

  // Drop what fell off the front of the kept tail, editing the first nodes in place so that a
  // selection further down stays where it is.
  trimTo(kept) {
    let excess = this.length - kept;
    while (excess > 0 && this.pre.firstElementChild) {
      const seg = this.pre.firstElementChild;
      if (seg.chars <= excess) {
        excess -= seg.chars;
        this.length -= seg.chars;
        seg.remove();
        continue;
      }
      const node = seg.firstChild;
      const cut = Math.min(node.length, excess);
      if (cut === node.length) node.remove(); else node.deleteData(0, cut);
      seg.chars -= cut;
      this.length -= cut;
      excess -= cut;
    }
  }
}
