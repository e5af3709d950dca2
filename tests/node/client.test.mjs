// A flowtrack client in another language: Node.js with @grpc/grpc-js and
// @grpc/proto-loader, loading the .proto files of protos/ at run time.
// tests/test_node_client.py starts a server and runs this with
// FLOWTRACK_NODE_TEST_ADDRESS set; `node --test` on its own skips it.
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const address = process.env.FLOWTRACK_NODE_TEST_ADDRESS;
const protos = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");

// google/protobuf/{timestamp,field_mask}.proto are not in protos/: proto-loader
// bundles the well-known types (protobufjs "common"), so includeDirs only needs
// our own directory.
const definition = protoLoader.loadSync(
  ["flowtrack/v1/campaign.proto", "flowtrack/v1/ingest.proto", "flowtrack/v1/report.proto"],
  { includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).flowtrack.v1;

const unary = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + 10_000 }, (error, reply) => (error ? reject(error) : resolve(reply))),
  );

const stamp = (seconds) => ({ seconds: String(seconds), nanos: 0 });

test("records events, reads stats and streams the report", { skip: !address && "FLOWTRACK_NODE_TEST_ADDRESS is not set" }, async () => {
  const credentials = grpc.credentials.createInsecure();
  const campaigns = new v1.CampaignService(address, credentials);
  const ingest = new v1.IngestService(address, credentials);
  const reports = new v1.ReportService(address, credentials);
  const id = `node-${process.pid}`;
  try {
    const created = await unary(campaigns, "CreateCampaign", { campaign: { id, name: "From Node" } });
    assert.equal(created.campaign.id, id);

    // A batch on the bidirectional stream: three status events, a duplicate and a click.
    const t0 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const status = (event_id, recipient, status, at, extra = {}) => ({
      status: { event_id, campaign_id: id, recipient, status, occurred_at: stamp(at), attempt: 1, channel: "whatsapp", ...extra },
    });
    const events = [
      status("n1", "+5511000000001", "MESSAGE_STATUS_SUBMITTED", t0 + 1),
      status("n2", "+5511000000001", "MESSAGE_STATUS_SUCCESS", t0 + 2, { output_variables: { answer: "sí" } }),
      status("n3", "+5511000000002", "MESSAGE_STATUS_FAILED", t0 + 3, { failure_reason: { code: "BLOCKED_BY_USER", message: "blocked" } }),
      status("n1", "+5511000000001", "MESSAGE_STATUS_SUBMITTED", t0 + 1),
      { click: { event_id: "k1", campaign_id: id, recipient: "+5511000000001", link_id: "promo", link_variable: "Body variable 1", occurred_at: stamp(t0 + 5), location: { country_code: "BR" } } },
    ];
    const replies = await new Promise((resolve, reject) => {
      const got = [];
      const call = ingest.StreamEvents();
      call.on("data", (reply) => got.push(reply));
      call.on("error", reject);
      call.on("end", () => resolve(got));
      call.write({ batch_id: "b1", events });
      call.end();
    });
    assert.equal(replies.length, 1);
    assert.equal(replies[0].batch_id, "b1");
    assert.deepEqual(
      replies[0].results.map((r) => r.outcome),
      ["EVENT_OUTCOME_ACCEPTED", "EVENT_OUTCOME_ACCEPTED", "EVENT_OUTCOME_ACCEPTED", "EVENT_OUTCOME_DUPLICATE", "EVENT_OUTCOME_ACCEPTED"],
    );

    // And one unary event.
    const one = await unary(ingest, "RecordStatusEvent", {
      event: { event_id: "n4", campaign_id: id, recipient: "+5511000000003", status: "MESSAGE_STATUS_SUBMITTED", occurred_at: stamp(t0 + 4) },
    });
    assert.equal(one.result.outcome, "EVENT_OUTCOME_ACCEPTED");

    const { stats } = await unary(reports, "GetCampaignStats", { campaign_id: id });
    const counts = stats.overall.counts;
    assert.equal(stats.sequence, one.committed_sequence); // int64 as a string (longs: String)
    assert.deepEqual(
      [counts.total, counts.submitted, counts.success, counts.failed, counts.awaiting].map(Number),
      [3, 3, 1, 1, 1],
    );
    assert.equal(Number(stats.overall.clicks), 1);
    assert.equal(stats.overall.rates.success_rate, 1 / 3);

    const rows = await new Promise((resolve, reject) => {
      const got = [];
      const call = reports.StreamMessageReport({ campaign_id: id, page_size: 2 });
      call.on("data", (page) => got.push(...page.rows));
      call.on("error", reject);
      call.on("end", () => resolve(got));
    });
    assert.deepEqual(
      rows.map((r) => [r.recipient, r.status]),
      [
        ["+5511000000001", "MESSAGE_STATUS_SUCCESS"],
        ["+5511000000002", "MESSAGE_STATUS_FAILED"],
        ["+5511000000003", "MESSAGE_STATUS_SUBMITTED"],
      ],
    );
    assert.equal(rows[0].output_variables.answer, "sí");
    assert.equal(Number(rows[0].clicks), 1);
    assert.equal(rows[1].failure_reason.code, "BLOCKED_BY_USER");

    // The CSV export, concatenated from its chunks.
    const csv = await new Promise((resolve, reject) => {
      const chunks = [];
      const call = reports.ExportReport({ campaign_id: id, format: "EXPORT_FORMAT_CSV" });
      call.on("data", (m) => chunks.push(m.chunk));
      call.on("error", reject);
      call.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    });
    const lines = csv.trimEnd().split("\r\n");
    assert.ok(lines[0].startsWith("customer_external_id,business_id,campaign_name,sendout_id,"));
    assert.equal(lines.length, 4);
  } finally {
    for (const client of [campaigns, ingest, reports]) client.close();
  }
});
