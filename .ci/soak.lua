-- wrk script of the soak (.ci/soak): one phase of load on the booking example.
--
--   SOAK_DEADLINE_MS=2000 SOAK_PAUSE_MS=100 SOAK_SEND_FOR_MS=7000 \
--   SOAK_MAX_PER_THREAD=100000 SOAK_OUT=phase.txt \
--   wrk -t2 -c100 -d10s -T10s -s .ci/soak.lua http://127.0.0.1:PORT
--
-- Every connection sends a request (GET /slots, or GET /bookings/1 one time
-- in four; class urgent, normal or bulk as 1:6:3; `x-request-timeout:
-- SOAK_DEADLINE_MS`), waits for its answer, pauses SOAK_PAUSE_MS, and sends
-- the next one, until SOAK_SEND_FOR_MS have passed or its thread has sent
-- SOAK_MAX_PER_THREAD requests: then it sends nothing more, so the requests
-- in flight are answered before wrk stops (its -d is longer than
-- SOAK_SEND_FOR_MS by more than the deadline).
--
-- Every answer is checked: 2xx; or 503/429 with a Retry-After of whole
-- seconds and an application/problem+json body naming its status; or
-- 502/504, the booking app's own answer when the back end refuses or times
-- out a call brownout let through (a problem body, no Retry-After to give).
-- Anything else is "bad". done() writes the phase's figures, one
-- `key value` a line, to SOAK_OUT. Answers that arrive after the phase's
-- first SOAK_SETTLE_MS (default 2300: the back end changes 0.3 s in) are
-- also counted apart (`settled_answers`, `settled_2xx`): the share a phase
-- serves once brownout has had 2 s to adapt. (wrk's Lua has no handle on
-- which request an answer belongs to; an answer in the first deadline
-- after that instant may be to a request sent just before it.)

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_usec; } soak_timeval;
  int gettimeofday(soak_timeval *tv, void *tz);
]]
local tv = ffi.new("soak_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

local function env_number(name)
  local value = tonumber(os.getenv(name) or "")
  if value == nil then
    error(name .. " must be set to a number")
  end
  return value
end

-- Per thread (each thread has its own Lua state).
sent = 0
received = 0
settled_answers = 0 -- received after the phase's first SOAK_SETTLE_MS
settled_2xx = 0     -- of those, 2xx
bad = 0
status = {}        -- status code -> count
reasons = {}       -- brownout reason of 503s -> count
no_retry_after = {} -- reason -> 503/429s without Retry-After
examples = {}      -- a few bad answers, for the log

local requests = {}

local deadline_ms, pause_ms, stop_at, max_sent, settled_at

function init(_)
  deadline_ms = env_number("SOAK_DEADLINE_MS")
  pause_ms = env_number("SOAK_PAUSE_MS")
  stop_at = now_ms() + env_number("SOAK_SEND_FOR_MS")
  max_sent = env_number("SOAK_MAX_PER_THREAD")
  settled_at = now_ms() + (tonumber(os.getenv("SOAK_SETTLE_MS") or "") or 2300)
  math.randomseed(1000 + (thread_id or 0))
  local classes = { "urgent", "normal", "normal", "normal", "normal", "normal", "normal", "bulk", "bulk", "bulk" }
  for i, class in ipairs(classes) do
    local headers = { ["x-priority"] = class, ["x-request-timeout"] = tostring(deadline_ms) }
    requests[#requests + 1] = wrk.format("GET", "/slots", headers)
    if i % 3 == 0 then
      requests[#requests + 1] = wrk.format("GET", "/bookings/1", headers)
    end
  end
end

-- wrk calls request() once before the run to check the script; only the
-- calls after a delay() send a request.
local running = false

function delay()
  running = true
  if sent >= max_sent or now_ms() >= stop_at then
    return 3600 * 1000 -- sends nothing more; wrk stops first
  end
  return pause_ms
end

function request()
  if running then
    sent = sent + 1
  end
  return requests[math.random(#requests)]
end

local function note_bad(code, why, body)
  bad = bad + 1
  if #examples < 5 then
    examples[#examples + 1] = code .. " " .. why .. ": " .. string.sub(body or "", 1, 200)
  end
end

local function header(headers, name)
  for key, value in pairs(headers) do
    if string.lower(key) == name then
      return value
    end
  end
  return nil
end

function response(code, headers, body)
  received = received + 1
  status[code] = (status[code] or 0) + 1
  local settled = now_ms() >= settled_at
  if settled then
    settled_answers = settled_answers + 1
  end
  if code >= 200 and code < 300 then
    if settled then
      settled_2xx = settled_2xx + 1
    end
    return
  end
  local ctype = header(headers, "content-type") or ""
  local problem = ctype == "application/problem+json"
      and string.find(body, '"status":' .. code, 1, true) ~= nil
      and string.find(body, '"type":"urn:', 1, true) ~= nil
  if code == 503 or code == 429 then
    local reason = string.match(body, '"reason":"([a-z_]+)"') or "?"
    reasons[reason] = (reasons[reason] or 0) + 1
    local retry = header(headers, "retry-after")
    if not problem then
      note_bad(code, "without a problem body", body)
    elseif retry == nil then
      no_retry_after[reason] = (no_retry_after[reason] or 0) + 1
      note_bad(code, "without Retry-After", body)
    elseif not string.match(retry, "^%d+$") then
      note_bad(code, "Retry-After " .. retry .. " is not whole seconds", body)
    end
  elseif code == 502 or code == 504 then
    if not problem then
      note_bad(code, "without a problem body", body)
    end
  else
    note_bad(code, "unexpected status", body)
  end
end

local function add(into, from)
  for key, n in pairs(from or {}) do
    into[key] = (into[key] or 0) + n
  end
end

function done(summary, latency, _)
  local total = { sent = 0, received = 0, bad = 0 }
  local codes, why, missing, bad_examples = {}, {}, {}, {}
  for _, thread in ipairs(threads) do
    total.sent = total.sent + thread:get("sent")
    total.received = total.received + thread:get("received")
    total.settled_answers = (total.settled_answers or 0) + thread:get("settled_answers")
    total.settled_2xx = (total.settled_2xx or 0) + thread:get("settled_2xx")
    total.bad = total.bad + thread:get("bad")
    add(codes, thread:get("status"))
    add(why, thread:get("reasons"))
    add(missing, thread:get("no_retry_after"))
    for _, line in ipairs(thread:get("examples") or {}) do
      bad_examples[#bad_examples + 1] = line
    end
  end
  -- Answers later than the deadline + 100 ms (wrk keeps every latency up
  -- to its -T, which the soak sets far above the deadline; later ones it
  -- counts as timeouts).
  local limit_us = (env_number("SOAK_DEADLINE_MS") + 100) * 1000
  local out = assert(io.open(os.getenv("SOAK_OUT"), "w"))
  local function put(key, value)
    out:write(key, " ", tostring(value), "\n")
  end
  -- The latency distribution (wrk 4.1: #latency distinct values, latency(i)
  -- the i-th and its count), for the whole soak's percentiles.
  local late = 0
  for i = 1, #latency do
    local value, count = latency(i)
    if count > 0 then
      out:write("lat ", string.format("%d %d", value, count), "\n")
      if value > limit_us then
        late = late + count
      end
    end
  end
  put("sent", total.sent)
  put("received", total.received)
  put("completed", summary.requests)
  put("bad", total.bad)
  put("settled_answers", total.settled_answers or 0)
  put("settled_2xx", total.settled_2xx or 0)
  put("late", late)
  put("connect_errors", summary.errors.connect)
  put("read_errors", summary.errors.read)
  put("write_errors", summary.errors.write)
  put("timeouts", summary.errors.timeout)
  put("p50_ms", string.format("%.1f", latency:percentile(50) / 1000))
  put("p99_ms", string.format("%.1f", latency:percentile(99) / 1000))
  put("max_ms", string.format("%.1f", latency.max / 1000))
  for code, n in pairs(codes) do
    put("status_" .. code, n)
  end
  for reason, n in pairs(why) do
    put("reason_" .. reason, n)
  end
  for reason, n in pairs(missing) do
    put("no_retry_after_" .. reason, n)
  end
  for _, line in ipairs(bad_examples) do
    put("example", line)
  end
  out:close()
end
