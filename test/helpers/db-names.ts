import { randomBytes } from "node:crypto";

/** The maintenance database of the server TEST_DATABASE_URL names (to create and drop others). */
export function adminUrl(url: string): string {
  const u = new URL(url);
  u.pathname = "/postgres";
  return u.toString();
}

export const templateName = () => `hbff_tmpl_${process.pid}`;
export const testDatabaseName = () => `hbff_t_${process.pid}_${randomBytes(4).toString("hex")}`;
