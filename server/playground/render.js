// Model text -> DOM. Text reaches the DOM only as text nodes (never innerHTML), so markup in a
// reply shows as the characters it is. A small markdown subset: ``` fenced code, `code`,
// **bold**, *italic*, "- " lists, paragraphs (blank line) and line breaks.

const INLINE = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|\*([^*\s][^*\n]*)\*/g;

export function renderText(text) {
  const fragment = document.createDocumentFragment();
  for (const block of blocks(text)) fragment.append(block);
  return fragment;
}

function* blocks(text) {
  const lines = text.split("\n");
  for (let i = 0; i < lines.length;) {
    if (lines[i].startsWith("```")) {  // a fence still open while streaming runs to the end
      const end = lines.findIndex((line, j) => j > i && line.startsWith("```"));
      const body = lines.slice(i + 1, end < 0 ? lines.length : end).join("\n");
      const pre = element("pre");
      pre.append(element("code", body));
      yield pre;
      i = end < 0 ? lines.length : end + 1;
    } else if (isItem(lines[i])) {
      const list = element("ul");
      for (; i < lines.length && isItem(lines[i]); i++) {
        list.append(inline(element("li"), lines[i].slice(2)));
      }
      yield list;
    } else if (!lines[i].trim()) {
      i++;
    } else {
      const paragraph = element("p");
      for (let first = true; i < lines.length && lines[i].trim() && !lines[i].startsWith("```")
           && !isItem(lines[i]); i++, first = false) {
        if (!first) paragraph.append(element("br"));
        inline(paragraph, lines[i]);
      }
      yield paragraph;
    }
  }
}

function isItem(line) {
  return line.startsWith("- ") || line.startsWith("* ");
}

function inline(parent, line) {
  let at = 0;
  for (const match of line.matchAll(INLINE)) {
    parent.append(line.slice(at, match.index));
    const [, code, bold, italic] = match;
    if (code !== undefined) parent.append(element("code", code));
    else if (bold !== undefined) parent.append(element("strong", bold));
    else parent.append(element("em", italic));
    at = match.index + match[0].length;
  }
  parent.append(line.slice(at));
  return parent;
}

function element(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}
