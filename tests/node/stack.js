// Starts a real wxmp stack for node tests: the `wxmp up` binary (gateway, auth, user, pay and
// the WeChat sandbox in one process, SQLite + in-memory sessions) on free ports, in a fresh
// data directory. The binary is $WXMP_BIN (the cargo test that runs these sets it), else
// $CARGO_TARGET_DIR/debug/wxmp, else target/debug/wxmp.
'use strict'

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..', '..')

function wxmpBinary () {
  if (process.env.WXMP_BIN) return process.env.WXMP_BIN
  const target = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target')
  return path.join(target, 'debug', 'wxmp')
}

/**
 * @returns {Promise<{gateway: string, sandbox: string, pay: string, bin: string,
 *   stop: () => Promise<void>, log: () => string}>}
 */
async function startStack () {
  const bin = wxmpBinary()
  if (!fs.existsSync(bin)) {
    throw new Error(`no wxmp binary at ${bin}: build it (cargo build -p wxmp) or set WXMP_BIN`)
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wxmp-node-'))
  const env = Object.assign({}, process.env, {
    WXMP_DATA_DIR: dataDir,
    // Notify retries in milliseconds instead of minutes.
    SANDBOX_NOTIFY_TIME_SCALE: '0.001',
    // Refunds' mutual-TLS port on a free one, like every other port of this stack.
    SANDBOX_SECAPI_LISTEN_ADDR: '127.0.0.1:0',
    RUST_LOG: process.env.RUST_LOG || 'warn'
  })
  // This stack is SQLite + memory + the in-process sandbox, whatever the caller's shell says.
  for (const name of ['DATABASE_URL', 'REDIS_URL', 'AUTH_REDIS_URL', 'USER_DATABASE_URL',
    'PAY_DATABASE_URL', 'WXMP_WECHAT_API_BASE', 'WXMP_WECHAT_PAY_BASE', 'WXMP_INTERNAL_TOKEN',
    // The demo catalog, with its virtual-payment product (vip_month).
    'PAY_PRODUCTS', 'PAY_XPAY_PRODUCTS']) {
    delete env[name]
  }
  const ports = ['--gateway-port', '0', '--auth-port', '0', '--user-port', '0', '--pay-port', '0',
    '--sandbox-port', '0']
  const child = spawn(bin, ['up', ...ports], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  child.stderr.on('data', (d) => { out += d })
  const exited = new Promise((resolve) => child.on('exit', resolve))

  const urls = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`wxmp up did not start in 60 s:\n${out}`)), 60000)
    const check = () => {
      const gateway = /gateway\s+(http:\/\/\S+)/.exec(out)
      const sandbox = /sandbox\s+(http:\/\/\S+)/.exec(out)
      // "gRPC     auth http://…  user http://…  pay http://…"
      const pay = /gRPC\s.*\bpay\s+(http:\/\/\S+)/.exec(out)
      if (gateway && sandbox && pay) {
        clearTimeout(timer)
        resolve({ gateway: gateway[1], sandbox: sandbox[1], pay: pay[1] })
      }
    }
    child.stdout.on('data', check)
    exited.then((code) => { clearTimeout(timer); reject(new Error(`wxmp up exited (${code}):\n${out}`)) })
  })

  return {
    ...urls,
    bin,
    log: () => out,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM')
      await exited
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

/** POSTs JSON to the sandbox (a developer endpoint); rejects on a non-2xx answer. */
async function sandboxPost (sandbox, path, body) {
  const res = await fetch(sandbox + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body)
  })
  const text = await res.text()
  if (!res.ok) {
    const err = new Error(`${path}: HTTP ${res.status} ${text}`)
    err.status = res.status
    err.body = text
    throw err
  }
  return JSON.parse(text)
}

/** Waits for `check()` to answer something truthy, polling every 100 ms up to `ms`. */
async function eventually (check, ms, what) {
  const deadline = Date.now() + ms
  let last
  for (;;) {
    try {
      last = await check()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${last}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

module.exports = { startStack, sandboxPost, eventually, ROOT }
