// Which bodies upstream parses, as its framework is set up (express.json() and
// express.urlencoded({ extended: false }) in its main.ts): `application/json` as JSON, and
// `application/x-www-form-urlencoded` as a form, whose values are strings (a repeated name, an
// array of them). Any other type, `application/*+json` included, is not parsed: the body has no
// fields. Shared by the simulator and the service's proxied routes, so both judge alike.
import { parse } from "node:querystring";

export type BodyKind = "json" | "form" | undefined;

export function bodyKind(contentType: string | undefined): BodyKind {
  const type = (contentType ?? "").split(";", 1)[0]!.trim().toLowerCase();
  return type === "application/json" ? "json" : type === "application/x-www-form-urlencoded" ? "form" : undefined;
}

/** A form's fields (at most 1,000, as body-parser keeps), on an object with no prototype. */
export function parseForm(text: string): Record<string, unknown> {
  return parse(text, "&", "=", { maxKeys: 1000 }) as Record<string, unknown>;
}
