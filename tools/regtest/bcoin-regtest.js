'use strict';
// An offline Bitcoin regtest chain for onionvpn's Lightning tests: bcoin in memory, JSON-RPC
// on 127.0.0.1:<port>, no P2P. Its RPC replies are adapted where ldk-node's bitcoind-RPC chain
// source expects Bitcoin Core's shape (see docs/performance.md and tests/src/regtest.rs).
//
// Usage: NODE_BACKEND=js node bcoin-regtest.js <rpc-port> <rpc-password>
// Prints "ready <port>" on stdout once RPC serves; exits when stdin closes, so the chain
// never outlives the test process that started it.

process.env.NODE_BACKEND = process.env.NODE_BACKEND || 'js';

const bcoin = require('bcoin');

const port = Number(process.argv[2]);
const apiKey = process.argv[3];
if (!Number.isInteger(port) || port <= 0 || port > 65535 || !apiKey) {
  process.stderr.write('usage: bcoin-regtest.js <rpc-port> <rpc-password>\n');
  process.exit(2);
}

function adapt(rpc) {
  // lightning-block-sync needs Core's verbose header: nonce and bits as in the raw header,
  // and no previousblockhash at all (rather than null) for genesis.
  const header = rpc.calls.getblockheader;
  rpc.calls.getblockheader = async function (args, help) {
    const res = await header.call(this, args, help);
    // Verbose (the default) answers an object; raw answers a hex string.
    if (help || res === null || typeof res !== 'object')
      return res;
    const raw = Buffer.from(await header.call(this, [args[0], false], help), 'hex');
    res.nonce = raw.readUInt32LE(76);
    res.bits = Buffer.from(raw.slice(72, 76)).reverse().toString('hex');
    if (res.previousblockhash === null)
      delete res.previousblockhash;
    if (res.nextblockhash === null)
      delete res.nextblockhash;
    return res;
  };
  // Core's shape, a fixed 1 sat/vB: regtest has no fee market to estimate from.
  rpc.calls.estimatesmartfee = async function (args) {
    return { feerate: 0.00001, blocks: Number(args[0]) || 1 };
  };
}

async function main() {
  const node = new bcoin.FullNode({
    network: 'regtest',
    memory: true,
    workers: false,
    listen: false,
    indexTX: true,
    httpHost: '127.0.0.1',
    httpPort: port,
    apiKey: apiKey,
    logLevel: 'error',
    logConsole: true
  });
  adapt(node.rpc);
  await node.open();
  // No node.connect(): no peers, no P2P traffic.
  process.stdout.write(`ready ${port}\n`);
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

main().catch((e) => {
  process.stderr.write(`bcoin-regtest: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
