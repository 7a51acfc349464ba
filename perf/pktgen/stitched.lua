-- pktgen-dpdk Lua profile: stitched TCP segments for N stitches (N <= 50000: pktgen's range
-- mode steps each field on its own, so only the client port can count; for more stitches
-- replay a pcap from `stitch-mkpcap --stitched OUT.pcap N` with pktgen's `-s 0:OUT.pcap`),
-- then an RFC 2544 throughput search: the highest rate whose loss stays under 0.1%.
-- Run: pktgen ... -- -P -T -m "[1:2].0, [3:4].1" -f perf/pktgen/stitched.lua
package.path = package.path .. ";?.lua;test/?.lua;app/?.lua;"
require "Pktgen"

local stitches  = 1000          -- [[stitch.install]] count on the middlebox
local size      = 90            -- bytes on the wire (pktgen sizes exclude nothing: 64 = minimum)
local trial_ms  = 10000         -- RFC 2544: at least 60 s for a report; 10 s while tuning
local loss_max  = 0.001
local steps     = 10

pktgen.stop("all")
pktgen.set("0", "size", size)
pktgen.set_proto("0", "tcp")
pktgen.set_range("0", "on")
pktgen.range.src_mac("0", "start", "02:00:00:00:0c:01")
pktgen.range.dst_mac("0", "start", "02:00:00:00:0a:01")
pktgen.range.src_ip("0", "start", "198.18.0.1")
pktgen.range.src_ip("0", "min", "198.18.0.1")
pktgen.range.src_ip("0", "max", "198.18.0.1")
pktgen.range.src_ip("0", "inc", "0.0.0.0")
pktgen.range.dst_ip("0", "start", "198.18.0.2")
pktgen.range.dst_ip("0", "min", "198.18.0.2")
pktgen.range.dst_ip("0", "max", "198.18.0.2")
pktgen.range.dst_ip("0", "inc", "0.0.0.0")
pktgen.range.src_port("0", "start", 10000)
pktgen.range.src_port("0", "min", 10000)
pktgen.range.src_port("0", "max", 10000 + stitches - 1)
pktgen.range.src_port("0", "inc", 1)
pktgen.range.dst_port("0", "start", 7000)
pktgen.range.dst_port("0", "min", 7000)
pktgen.range.dst_port("0", "max", 7000)
pktgen.range.dst_port("0", "inc", 0)
pktgen.range.pkt_size("0", "start", size)
pktgen.range.pkt_size("0", "min", size)
pktgen.range.pkt_size("0", "max", size)
pktgen.range.pkt_size("0", "inc", 0)

local function trial(rate)
    pktgen.clr()
    pktgen.set("0", "rate", rate)
    pktgen.start("0")
    pktgen.delay(trial_ms)
    pktgen.stop("0")
    pktgen.delay(500)           -- let in-flight frames arrive
    local tx = pktgen.portStats("0", "port")[0].opackets
    local rx = pktgen.portStats("1", "port")[1].ipackets
    local loss = (tx - rx) / math.max(tx, 1)
    printf("rate %6.2f%%: tx %d rx %d loss %.5f\n", rate, tx, rx, loss)
    return loss
end

local lo, hi = 0, 100
if trial(100) < loss_max then lo = 100 else
    for _ = 1, steps do
        local mid = (lo + hi) / 2
        if trial(mid) < loss_max then lo = mid else hi = mid end
        if hi - lo < 0.5 then break end
    end
end
printf("RFC 2544 throughput: %.2f%% of line rate with %d stitches, %d-byte frames\n", lo, stitches, size)
-- Latency at fractions of the maximum: pktgen's latency page samples it.
pktgen.latency("0", "enable")
for _, f in ipairs({0.1, 0.5, 0.9}) do
    trial(lo * f)
    local l = pktgen.pktStats("0")[0].latency
    if l then printf("%3d%% of max: latency avg %s us\n", f * 100, tostring(l.avg_us)) end
end
