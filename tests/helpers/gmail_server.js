// A Gmail-like IMAP server for the label tests: Hoodiecrow (npm hoodiecrow-imap, a scriptable
// IMAP4rev1 server for client tests) with its X-GM-EXT-1 plugin, over TLS with our test CA's
// certificate. Usage: node gmail_server.js <port> <storage.json> <cert.pem> <key.pem>
"use strict";
const fs = require("fs");
const hoodiecrow = require("hoodiecrow-imap");
const [port, storagePath, certPath, keyPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(storagePath, "utf8"));
const server = hoodiecrow({
  plugins: ["ID", "IDLE", "ENABLE", "CONDSTORE", "SPECIAL-USE", "UIDPLUS", "X-GM-EXT-1"],
  secureConnection: true,
  credentials: { key: fs.readFileSync(keyPath), cert: fs.readFileSync(certPath) },
  users: config.users,
  storage: config.storage,
});
// The plugin answers X-GM-MSGID and X-GM-LABELS but forgets to announce itself.
server.registerCapability("X-GM-EXT-1");
server.listen(Number(port), "127.0.0.1", () => console.log("listening"));
