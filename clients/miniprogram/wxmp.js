// wxmp mini-program client: plain JavaScript (ES2018, CommonJS), no build step.
// Copy this file into the mini program and `require('./wxmp.js')`.
//
// It speaks the gateway's envelope {code, msg, data}: code 200 is success, anything else
// rejects with a WxmpError carrying the envelope code (see the README's code table).
'use strict'

/** Envelope code of an unknown or expired login code/token: log in again. */
const INVALID_CREDENTIAL = 202
/** Order states after which polling stops. */
const FINAL_STATES = ['PAID', 'CLOSED']
const TOKEN_KEY = 'wxmp_token'

/**
 * A failure answered by the gateway (its envelope code and msg), or by WeChat's own APIs
 * (`code` is then a string such as 'WX_LOGIN_FAILED', and `errMsg` is WeChat's message).
 */
class WxmpError extends Error {
  /**
   * @param {number|string} code envelope code (201..213, 500) or a 'WX_…' string
   * @param {string} msg
   * @param {number} [status] the HTTP status, for gateway answers
   */
  constructor (code, msg, status) {
    super(`${code} ${msg}`)
    this.name = 'WxmpError'
    /** @type {number|string} */
    this.code = code
    /** @type {string} */
    this.msg = msg
    /** @type {number|undefined} */
    this.status = status
  }
}

/**
 * @typedef {object} WxLike
 * The part of the mini program's `wx` this client uses.
 * @property {(o: {success: (r: {code: string}) => void, fail: (e: {errMsg: string}) => void}) => void} login
 * @property {(o: {url: string, method: string, data?: any, header?: Object<string,string>,
 *   success: (r: {statusCode: number, data: any}) => void, fail: (e: {errMsg: string}) => void}) => void} request
 * @property {(o: {timeStamp: string, nonceStr: string, package: string, signType: string, paySign: string,
 *   success: (r: any) => void, fail: (e: {errMsg: string}) => void}) => void} requestPayment
 * @property {(o: {mode: string, signData: string, paySig: string, signature: string,
 *   success: (r: any) => void, fail: (e: {errMsg: string, errCode?: number}) => void}) => void} [requestVirtualPayment]
 *   virtual payment (虚拟支付), for payVirtual
 * @property {(o: {desc: string, success: (r: {encryptedData: string, iv: string, rawData?: string, signature?: string}) => void,
 *   fail: (e: {errMsg: string}) => void}) => void} getUserProfile
 * @property {(key: string) => any} getStorageSync
 * @property {(key: string, value: any) => void} setStorageSync
 * @property {(key: string) => void} removeStorageSync
 */

/**
 * @typedef {object} PollOptions
 * @property {number} [initialMs=500] first delay between order polls
 * @property {number} [maxMs=5000] the delay doubles up to this
 * @property {number} [timeoutMs=60000] give up (WxmpError 'PAY_PENDING') after this
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} baseUrl the gateway, e.g. 'https://api.example.com' (no trailing slash needed)
 * @property {string} [appId] which configured app this mini program is (default: the gateway's first)
 * @property {WxLike} [wx] defaults to the global `wx`
 * @property {PollOptions} [poll]
 */

/**
 * @typedef {object} Profile
 * @property {number} user_id
 * @property {string} openid
 * @property {boolean} has_unionid
 * @property {string} nickname
 * @property {string} avatar_url
 * @property {number} gender
 * @property {string} language
 * @property {string} city
 * @property {string} province
 * @property {string} country
 * @property {string} phone
 * @property {string} phone_country_code
 */

/**
 * @typedef {object} Order
 * @property {string} order_no
 * @property {string} state CREATED, PAYING, PAID or CLOSED
 * @property {number} amount_fen
 * @property {string} description
 * @property {string} product_id
 * @property {string} transaction_id
 * @property {number} created_at
 * @property {number} paid_at
 * @property {number} expires_at
 */

/**
 * @typedef {object} PayParams what POST /pay/ answers: wx.requestPayment's keys plus the order
 * @property {string} appId
 * @property {string} timeStamp
 * @property {string} nonceStr
 * @property {string} package
 * @property {string} signType
 * @property {string} paySign
 * @property {string} order_no
 */

/**
 * @typedef {object} VirtualPayParams what POST /pay/ answers for a product sold through
 * virtual payment: wx.requestVirtualPayment's keys plus the order
 * @property {string} mode 'short_series_goods' (道具直购)
 * @property {string} signData the JSON string the server signed (price from the catalog)
 * @property {string} paySig HMAC-SHA256 with the virtual-payment AppKey (server side)
 * @property {string} signature HMAC-SHA256 with the user's session_key (server side)
 * @property {string} order_no
 */

/** wx.* callbacks → a promise. */
function call (wx, name, options) {
  return new Promise((resolve, reject) => {
    wx[name](Object.assign({}, options, {
      success: resolve,
      fail: (e) => reject(new WxmpError(`WX_${name.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase()}_FAILED`,
        (e && e.errMsg) || `${name}:fail`))
    }))
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Creates a client bound to one gateway.
 * @param {ClientOptions} options
 */
function createClient (options) {
  const wxApi = options.wx || /* global wx */ (typeof wx !== 'undefined' ? wx : undefined)
  if (!wxApi) throw new TypeError('createClient: no wx (pass options.wx outside a mini program)')
  const baseUrl = String(options.baseUrl || '').replace(/\/+$/, '')
  if (!baseUrl) throw new TypeError('createClient: baseUrl is required')
  const poll = Object.assign({ initialMs: 500, maxMs: 5000, timeoutMs: 60000 }, options.poll)
  /** @type {Promise<string>|null} one login at a time, shared by concurrent callers */
  let loggingIn = null

  /** One HTTP call, answered with the envelope's data or a WxmpError. */
  async function raw (path, method, data, token) {
    const header = { 'content-type': 'application/json' }
    if (token) header.Authorization = `Bearer ${token}`
    const res = await call(wxApi, 'request', { url: baseUrl + path, method, data, header })
    const body = res.data
    if (body && typeof body === 'object' && typeof body.code === 'number') {
      if (body.code === 200) return body.data
      throw new WxmpError(body.code, body.msg || '', res.statusCode)
    }
    throw new WxmpError(500, `unexpected answer (HTTP ${res.statusCode})`, res.statusCode)
  }

  /**
   * wx.login → POST /login/; keeps the token in storage.
   * @returns {Promise<string>} the token
   */
  function login () {
    if (!loggingIn) {
      loggingIn = (async () => {
        const { code } = await call(wxApi, 'login', {})
        const data = { code }
        if (options.appId) data.app_id = options.appId
        const answer = await raw('/login/', 'POST', data)
        wxApi.setStorageSync(TOKEN_KEY, answer.token)
        return answer.token
      })()
      loggingIn.then(() => { loggingIn = null }, () => { loggingIn = null })
    }
    return loggingIn
  }

  /**
   * An authenticated call. Logs in first when there is no token, and once more (then retries
   * once) when the gateway says the token is invalid or expired (envelope 202).
   * @param {{path: string, method?: string, data?: any}} req
   * @returns {Promise<any>} the envelope's data
   */
  async function request (req) {
    const method = req.method || (req.data === undefined ? 'GET' : 'POST')
    let token = wxApi.getStorageSync(TOKEN_KEY)
    if (!token) token = await login()
    try {
      return await raw(req.path, method, req.data, token)
    } catch (e) {
      if (!(e instanceof WxmpError) || e.code !== INVALID_CREDENTIAL) throw e
      wxApi.removeStorageSync(TOKEN_KEY)
      token = await login()
      return raw(req.path, method, req.data, token)
    }
  }

  /**
   * wx.getUserProfile → POST /userinfo/ → the stored profile. Call it from a tap handler
   * (WeChat requires a user gesture for getUserProfile).
   * @param {string} [desc] why the profile is needed (shown to the user)
   * @returns {Promise<Profile>}
   */
  async function updateProfile (desc) {
    const p = await call(wxApi, 'getUserProfile', { desc: desc || 'profile' })
    return request({
      path: '/userinfo/',
      data: { encryptedData: p.encryptedData, iv: p.iv, rawData: p.rawData, signature: p.signature }
    })
  }

  /**
   * The phone number from `<button open-type="getPhoneNumber">`'s `e.detail.code`
   * (POST /phone/ {code}) → the profile with the number.
   * @param {string} code
   * @returns {Promise<Profile>}
   */
  function phoneByCode (code) {
    return request({ path: '/phone/', data: { code } })
  }

  /**
   * The older getPhoneNumber form: `e.detail.encryptedData` and `e.detail.iv`.
   * @param {{encryptedData: string, iv: string}} detail
   * @returns {Promise<Profile>}
   */
  function phoneByEncryptedData (detail) {
    return request({ path: '/phone/', data: { encryptedData: detail.encryptedData, iv: detail.iv } })
  }

  /**
   * @param {string} orderNo
   * @returns {Promise<Order>}
   */
  function order (orderNo) {
    return request({ path: `/orders/${encodeURIComponent(orderNo)}`, method: 'GET' })
  }

  /**
   * Polls the order until PAID or CLOSED, the delay doubling from poll.initialMs to
   * poll.maxMs; rejects with WxmpError 'PAY_PENDING' after poll.timeoutMs.
   * @param {string} orderNo
   * @returns {Promise<Order>}
   */
  async function waitForOrder (orderNo) {
    const deadline = Date.now() + poll.timeoutMs
    let delay = poll.initialMs
    for (;;) {
      const o = await order(orderNo)
      if (FINAL_STATES.includes(o.state)) return o
      if (Date.now() + delay > deadline) {
        throw new WxmpError('PAY_PENDING', `order ${orderNo} is still ${o.state}`)
      }
      await sleep(delay)
      delay = Math.min(delay * 2, poll.maxMs)
    }
  }

  /**
   * Pays a catalog product (a string, or {productId}) or an existing order ({orderNo}):
   * POST /pay/ → wx.requestPayment → polls the order until PAID or CLOSED.
   * The amount always comes from the server. A cancelled payment sheet rejects with
   * WxmpError 'WX_REQUEST_PAYMENT_FAILED' (errMsg 'requestPayment:fail cancel').
   * @param {string|{productId: string}|{orderNo: string}} what
   * @returns {Promise<Order>} the order in its final state
   */
  async function pay (what) {
    const target = typeof what === 'string' ? { product_id: what }
      : what && what.orderNo ? { order_no: what.orderNo }
        : what && what.productId ? { product_id: what.productId }
          : null
    if (!target) throw new TypeError('pay: give a product id, {productId} or {orderNo}')
    /** @type {PayParams} */
    const params = await request({ path: '/pay/', data: target })
    await call(wxApi, 'requestPayment', {
      timeStamp: params.timeStamp,
      nonceStr: params.nonceStr,
      package: params.package,
      signType: params.signType,
      paySign: params.paySign
    })
    return waitForOrder(params.order_no)
  }

  /**
   * Buys a product sold through virtual payment (虚拟支付; WeChat requires it for virtual
   * goods): POST /pay/ → wx.requestVirtualPayment with exactly the answered mode, signData,
   * paySig and signature → polls the order until PAID or CLOSED. The server signs both
   * signatures (the AppKey and the session_key never reach the phone); the user-state
   * signature is keyed with the session_key of the user's last login, so do not call
   * wx.login between the two steps (WeChat then refuses with 268490003). A product sold
   * through WeChat Pay rejects with WxmpError 'NOT_VIRTUAL_PAYMENT' (use pay); a failed sheet
   * with 'WX_REQUEST_VIRTUAL_PAYMENT_FAILED' and WeChat's errMsg.
   * @param {string|{productId: string}|{orderNo: string}} what
   * @returns {Promise<Order>} the order in its final state
   */
  async function payVirtual (what) {
    const target = typeof what === 'string' ? { product_id: what }
      : what && what.orderNo ? { order_no: what.orderNo }
        : what && what.productId ? { product_id: what.productId }
          : null
    if (!target) throw new TypeError('payVirtual: give a product id, {productId} or {orderNo}')
    /** @type {VirtualPayParams} */
    const params = await request({ path: '/pay/', data: target })
    if (!params.mode || !params.signData) {
      throw new WxmpError('NOT_VIRTUAL_PAYMENT', `order ${params.order_no} is paid through WeChat Pay: use pay()`)
    }
    await call(wxApi, 'requestVirtualPayment', {
      mode: params.mode,
      signData: params.signData,
      paySig: params.paySig,
      signature: params.signature
    })
    return waitForOrder(params.order_no)
  }

  /** Forgets the token here and revokes it at the gateway. */
  async function logout () {
    const token = wxApi.getStorageSync(TOKEN_KEY)
    wxApi.removeStorageSync(TOKEN_KEY)
    if (token) await raw('/logout', 'POST', {}, token)
  }

  return { login, request, updateProfile, phoneByCode, phoneByEncryptedData, order, waitForOrder, pay, payVirtual, logout }
}

module.exports = { createClient, WxmpError, TOKEN_KEY }
