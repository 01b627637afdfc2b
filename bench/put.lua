-- put.lua -- wrk script: ~1 KiB writes (a Kubernetes-object-sized value) to a KV/API server.
-- Groundwork's copy of ../shared/bench/put.lua (used by bench/raft-vs-etcd.sh): in k8s mode
-- every request carries a different payload (a per-thread counter in its first 16 bytes).
-- The shared script sends the same object each time, and a Kubernetes API server treats an
-- apply or update that changes nothing as a no-op that writes nothing (resourceVersion
-- unchanged), while every etcd put writes a new revision: with a fixed payload the k8s rows
-- would count no-op reads against etcd's writes. etcd mode is unchanged.
-- Used by store.sh. Environment:
--   MODE=etcd  POST /v3/kv/put {"key":b64,"value":b64}      (etcd v3 JSON gateway)
--   MODE=k8s   Kubernetes-style JSON object written to OBJ_COLLECTION/obj-N:
--              OBJ_COLLECTION  default /api/v1/namespaces/bench/configmaps
--              OBJ_APIVERSION, OBJ_KIND  default v1, ConfigMap (payload in .data.v);
--                              any other kind carries the payload in annotation bench/v
--              OBJ_SPEC        JSON for .spec (default: none)
--              WRITE=put       PUT (objects must exist: create them first), or
--              WRITE=apply     PATCH application/apply-patch+yaml ?fieldManager=bench
--                              (server-side apply: creates or updates)
--              AUTH_TOKEN      sent as a bearer token when set
--              e.g. OBJ_COLLECTION=/apis/groundwork.dev/v1alpha1/profiles
--                   OBJ_APIVERSION=groundwork.dev/v1alpha1 OBJ_KIND=Profile WRITE=apply
--   KEYS=10000        distinct keys; writes cycle over them (updates of 10k objects)
--   VALUE_SIZE=1024   bytes of payload per object
--   KEY_PREFIX=/registry/bench/
-- All requests are built once in init(), so wrk's Lua cost per request is a table lookup.

local mode   = os.getenv("MODE") or "etcd"
local nkeys  = tonumber(os.getenv("KEYS") or "10000")
local vsize  = tonumber(os.getenv("VALUE_SIZE") or "1024")
local prefix = os.getenv("KEY_PREFIX") or "/registry/bench/"

local b64c = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2^i - b % 2^(i-1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i,i) == '1' and 2^(6-i) or 0) end
    return b64c:sub(c+1, c+1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end

local nthreads = 0
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

local reqs = {}
local khdr = nil
local n = 0
local idx = 0

function init(args)
  local t = tonumber(tid) or 0
  local payload = string.rep("x", vsize)
  local hdr = { ["Content-Type"] = "application/json" }
  if mode == "etcd" then
    local v = b64(payload)
    for i = 0, nkeys - 1 do
      local key = b64(prefix .. "obj-" .. i)
      reqs[#reqs + 1] = wrk.format("POST", "/v3/kv/put", hdr,
        '{"key":"' .. key .. '","value":"' .. v .. '"}')
    end
  else
    local coll = os.getenv("OBJ_COLLECTION") or "/api/v1/namespaces/bench/configmaps"
    local apiv = os.getenv("OBJ_APIVERSION") or "v1"
    local kind = os.getenv("OBJ_KIND") or "ConfigMap"
    local spec = os.getenv("OBJ_SPEC")
    local write = os.getenv("WRITE") or "put"
    local token = os.getenv("AUTH_TOKEN")
    if token and token ~= "" then hdr["Authorization"] = "Bearer " .. token end
    local method, query = "PUT", ""
    if write == "apply" then
      method, query = "PATCH", "?fieldManager=bench&force=true"
      hdr["Content-Type"] = "application/apply-patch+yaml"
    end
    for i = 0, nkeys - 1 do
      local name = "obj-" .. i
      local body
      if kind == "ConfigMap" then
        body = '{"apiVersion":"' .. apiv .. '","kind":"ConfigMap","metadata":{"name":"' .. name ..
          '","namespace":"bench"},"data":{"v":"' .. payload .. '"}}'
      else
        body = '{"apiVersion":"' .. apiv .. '","kind":"' .. kind .. '","metadata":{"name":"' .. name ..
          '","annotations":{"bench/v":"' .. payload .. '"}}' .. (spec and (',"spec":' .. spec) or '') .. '}'
      end
      -- Split around the payload's first 16 bytes, which request() fills with a counter.
      local at = body:find(payload, 1, true)
      reqs[#reqs + 1] = { method, coll .. "/" .. name .. query, body:sub(1, at - 1),
                          body:sub(at + 16) }
    end
    khdr = hdr
  end
  n = #reqs
  idx = (t * 7919) % n   -- threads start at different keys
end

local seq = 0
function request()
  idx = idx + 1
  if idx > n then idx = 1 end
  local r = reqs[idx]
  if type(r) == "string" then return r end
  seq = seq + 1
  return wrk.format(r[1], r[2], khdr, r[3] .. string.format("%06d%010d", tonumber(tid) or 0, seq) .. r[4])
end
