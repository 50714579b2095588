/**
 * labhub's status-bar item: this server's GPU (or "CPU only"), its memory cap on a shared
 * slice, GPU-hours left this week, the time before an idle or length stop and, with disk
 * quotas, the home's usage and limit. A warning from the GPU service becomes a notification,
 * with "Extend session" while extensions are left. Everything comes from the server
 * extension's labhub/status (labhub_status/).
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

/** The status once a minute: the service's own figures move no faster. */
const POLL_MS = 60_000;

interface IDevice {
  id: string;
  model: string | null;
  shared: boolean;
  memory_limit_mib: number | null;
}

/** labhub/status's answer (labhub_status/status.py: combine). */
interface IStatus {
  gpu: boolean;
  devices: IDevice[];
  profile: string | null;
  display_name: string | null;
  memory_cap_mib: number | null;
  gpu_hours_left: number | null;
  idle_stop_in_s: number | null;
  length_stop_in_s: number | null;
  extensions_left: number;
  warning: string | null;
  /** "home 1.2 of 5 GB" with disk quotas (QUOTA_ROOT), else null. */
  home: string | null;
  service: string;
}

function duration(seconds: number): string {
  const minutes = Math.ceil(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${minutes % 60} min`;
}

/** The item's one line and its tooltip. */
function describe(status: IStatus): { text: string; title: string } {
  if (!status.gpu) {
    const text = ['CPU only', status.home].filter(Boolean).join(' · ');
    return { text, title: 'This server has no GPU.' };
  }
  const devices = status.devices
    .map(d => `GPU ${d.id}${d.model ? ` (${d.model})` : ''}`)
    .join(', ');
  const parts = [devices];
  if (status.profile) {
    parts.push(status.profile);
  }
  const cap =
    status.memory_cap_mib ??
    status.devices.find(d => d.shared)?.memory_limit_mib ??
    null;
  if (cap !== null) {
    parts.push(`${cap} MiB cap (shared)`);
  }
  if (status.gpu_hours_left !== null) {
    parts.push(`${status.gpu_hours_left.toFixed(1)} GPU-h left this week`);
  }
  if (status.idle_stop_in_s !== null) {
    parts.push(`idle stop in ${duration(status.idle_stop_in_s)}`);
  }
  if (status.length_stop_in_s !== null) {
    parts.push(`session ends in ${duration(status.length_stop_in_s)}`);
  }
  if (status.home) {
    parts.push(status.home);
  }
  const title = [
    status.display_name ?? status.profile ?? 'GPU server',
    ...parts,
    status.service === 'ok' ? '' : `GPU service: ${status.service}`
  ]
    .filter(Boolean)
    .join('\n');
  return { text: parts.join(' · '), title };
}

async function call(path: string, init: RequestInit = {}): Promise<IStatus> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(
    URLExt.join(settings.baseUrl, 'labhub', path),
    init,
    settings
  );
  const data = await response.json();
  if (!response.ok) {
    throw new Error(data.message ?? `labhub/${path} answered ${response.status}`);
  }
  return data as IStatus;
}

class StatusItem extends Widget {
  constructor() {
    super();
    this.id = 'labhub-status';
    this.addClass('labhub-status');
    this.node.textContent = '…';
  }

  async refresh(): Promise<void> {
    try {
      this.render(await call('status'));
    } catch (error) {
      // The lab works on; the next poll tries again.
      console.warn('labhub status:', error);
    }
  }

  private render(status: IStatus): void {
    const { text, title } = describe(status);
    this.node.textContent = text;
    this.node.title = title;
    this.notify(status);
  }

  /** One notification per distinct warning, replaced when the warning changes. */
  private notify(status: IStatus): void {
    if (status.warning === this.warning) {
      return;
    }
    if (this.notificationId) {
      Notification.dismiss(this.notificationId);
      this.notificationId = null;
    }
    this.warning = status.warning;
    if (!status.warning) {
      return;
    }
    const actions =
      status.extensions_left > 0
        ? [
            {
              label: `Extend session (${status.extensions_left} left)`,
              caption: 'Move this server’s stop time by one extension',
              callback: () => void this.extend()
            }
          ]
        : [];
    this.notificationId = Notification.warning(status.warning, {
      autoClose: false,
      actions
    });
  }

  private async extend(): Promise<void> {
    try {
      this.warning = null;
      this.render(await call('extend', { method: 'POST', body: '{}' }));
      Notification.success('Session extended.', { autoClose: 5000 });
    } catch (error) {
      Notification.error(`Not extended: ${(error as Error).message}`, {
        autoClose: false
      });
    }
  }

  private warning: string | null = null;
  private notificationId: string | null = null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'labhub-status:plugin',
  description: "This server's GPU, limits and time left, in the status bar.",
  autoStart: true,
  requires: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar) => {
    const item = new StatusItem();
    statusBar.registerStatusItem('labhub-status:item', {
      item,
      align: 'left',
      rank: 100
    });
    void item.refresh();
    window.setInterval(() => void item.refresh(), POLL_MS);
  }
};

export default plugin;
