/* Bindings input for dpdk-sys: the DPDK headers stitchd uses, plus the shim's prototypes.
 * Everything here is compiled with the flags `pkg-config --cflags libdpdk` gives
 * (which force-include rte_config.h and set -march=corei7). */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_cycles.h>
#include <rte_version.h>
#include <rte_ring.h>
#include <rte_thread.h>

/* Static inline functions and macros of DPDK, made callable: one C line each. */
uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
void shim_pktmbuf_free(struct rte_mbuf *m);
struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *mp);
int shim_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void shim_mbuf_refcnt_update(struct rte_mbuf *m, int16_t v);
uint16_t shim_mbuf_refcnt_read(const struct rte_mbuf *m);
char *shim_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int shim_errno(void);
unsigned shim_lcore_id(void);
uint64_t shim_get_tsc_cycles(void);
void shim_pause(void);
unsigned shim_mempool_avail_count(const struct rte_mempool *mp);
