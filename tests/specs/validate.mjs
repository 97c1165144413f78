// Checks docs/asyncapi.yaml against the official AsyncAPI 3.0.0 JSON Schema
// (@asyncapi/specs): a document the AsyncAPI tools would refuse fails tests/specs.rs.
// (docs/openapi.yaml gets the same check from openapi-spec-validator, in
// tests/specs.rs.) Exits 1 with the violations.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import yaml from "js-yaml";

const require = createRequire(import.meta.url);
const file = fileURLToPath(new URL("../../docs/asyncapi.yaml", import.meta.url));
const schema = require("@asyncapi/specs/schemas/3.0.0-without-$id.json");

const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
// A format of the meta-schema that ajv-formats does not know (content types).
ajv.addFormat("media-range", true);
const validate = ajv.compile(schema);
if (validate(yaml.load(readFileSync(file, "utf8")))) {
  console.log("docs/asyncapi.yaml: valid AsyncAPI 3.0.0");
} else {
  console.log("docs/asyncapi.yaml is not a valid AsyncAPI 3.0.0 document:");
  for (const e of validate.errors.slice(0, 20)) {
    console.log(`  at ${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`);
  }
  process.exit(1);
}
