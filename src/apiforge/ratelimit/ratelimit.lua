-- Decide every rate limit of one request, all-or-nothing, in one atomic step.
--
-- KEYS[i]      the state key of limit i
-- ARGV[1]      the time in microseconds, or '' to use the server clock (TIME): one clock for
--              every gateway instance, so their own clocks can never drift apart (Kong #11846)
-- ARGV[4i-2]   'g' (GCRA) or 's' (sliding window)
-- ARGV[4i-1]   GCRA: emission interval µs;   sliding window: period µs
-- ARGV[4i]     GCRA: tolerance µs (burst*T); sliding window: limit
-- ARGV[4i+1]   cost
--
-- Returns {admitted, allowed_1, remaining_1, reset_us_1, retry_us_1, allowed_2, ...}.
-- State is written only when every limit admits; each write is SET ... PX, value and expiry in
-- one command, so no key is ever left without a time to live (unlike INCR then EXPIRE).
-- Arithmetic mirrors gcra.py and sliding_window.py exactly (integers below 2^52).

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end

local function gcra(raw, emission, tolerance, cost)
  local base = now
  local tat = raw and tonumber(raw)
  if tat and tat > now then base = tat end
  local increment = cost * emission
  local new_tat = base + increment
  local allow_at = new_tat - tolerance
  if now < allow_at then
    local idle_in = base - now
    local retry = -1
    if increment <= tolerance then retry = allow_at - now end
    return 0, math.max(0, math.floor((tolerance - idle_in) / emission)), idle_in, retry, nil
  end
  local idle_in = new_tat - now
  return 1, math.max(0, math.floor((tolerance - idle_in) / emission)), idle_in, 0,
    string.format('%d', new_tat)
end

local function sliding(raw, period, limit, cost)
  local window = math.floor(now / period)
  local elapsed = now - window * period
  local current, previous = 0, 0
  if raw then
    local w, c, p = string.match(raw, '^(%-?%d+):(%d+):(%d+)$')
    if w then
      w, c, p = tonumber(w), tonumber(c), tonumber(p)
      if w == window then
        current, previous = c, p
      elseif w == window - 1 then
        previous = c
      end
    end
  end
  local used = previous * (period - elapsed) + current * period
  local capacity = limit * period
  if used + cost * period <= capacity then
    current = current + cost
    used = used + cost * period
    return 1, math.floor((capacity - used) / period), 2 * period - elapsed, 0,
      string.format('%d:%d:%d', window, current, previous)
  end
  local idle_in = 0
  if current > 0 then
    idle_in = 2 * period - elapsed
  elseif previous > 0 then
    idle_in = period - elapsed
  end
  local retry
  local room = limit - current - cost
  if room >= 0 and previous > 0 then
    retry = period - math.floor(room * period / previous) - elapsed
  else
    room = limit - cost
    if room < 0 then
      retry = -1
    else
      local wait_next = 0
      if current > 0 then wait_next = period - math.floor(room * period / current) end
      retry = period - elapsed + wait_next
    end
  end
  return 0, math.max(0, math.floor((capacity - used) / period)), idle_in, retry, nil
end

local function decide(i, raw, cost)
  local at = 4 * i - 2
  local a, b = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  if ARGV[at] == 'g' then return gcra(raw, a, b, cost) end
  return sliding(raw, a, b, cost)
end

local n = #KEYS
local raws, results = {}, {}
local admitted = 1
for i = 1, n do
  raws[i] = redis.call('GET', KEYS[i])
  local ok, remaining, reset, retry, state = decide(i, raws[i], tonumber(ARGV[4 * i + 1]))
  results[i] = {ok, remaining, reset, retry, state}
  if ok == 0 then admitted = 0 end
end

local out = {admitted}
for i = 1, n do
  local r = results[i]
  if admitted == 1 then
    if r[5] and r[3] > 0 then
      redis.call('SET', KEYS[i], r[5], 'PX', math.ceil(r[3] / 1000))
    end
  elseif r[1] == 1 then
    -- Uncharged standing of a limit that would have admitted the request.
    local _, remaining, reset, retry = decide(i, raws[i], 0)
    r = {1, remaining, reset, retry}
  end
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[3]
  out[#out + 1] = r[4]
end
return out
