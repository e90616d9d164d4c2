// RemoteSource: a source fed by another process's source (the proxy's primary, which holds the one
// ZooKeeper session per machine). It republishes each snapshot, so it keeps the same contract.

import type { Instance } from './instance.ts'
import { BaseSource, type SourceStatus } from './source.ts'

/** What the owner of the real source sends: the whole state, every time anything changed. */
export interface SourceSnapshot {
  readonly kind: string
  readonly status: SourceStatus
  readonly stale: boolean
  /** Absent until the real source knows its first membership. */
  readonly instances?: readonly Instance[]
}

export class RemoteSource extends BaseSource {
  kind: string

  constructor (service: string, kind: string) {
    super(service)
    this.kind = kind
  }

  async start (): Promise<void> {
    return this.firstMembership()
  }

  async close (): Promise<void> {
    this.releaseStart()
  }

  apply (snapshot: SourceSnapshot): void {
    this.kind = snapshot.kind
    if (snapshot.instances) this.publish(snapshot.instances)
    this.setStatus(snapshot.status, snapshot.stale)
  }
}
