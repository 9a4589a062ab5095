// marked-man ships no types: it is a marked extension object (options, renderer, tokenizer).
declare module "marked-man" {
  import type { MarkedExtension } from "marked";
  const markedMan: MarkedExtension & Record<string, unknown>;
  export default markedMan;
}
